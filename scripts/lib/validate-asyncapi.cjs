// Validates an AsyncAPI document with the official parser, resolving its
// relative $refs (docs/events/*.json). Exits 1 with the diagnostics on any
// error. Usage (scripts/validate.sh sets NODE_PATH to the installed parser):
//   node scripts/lib/validate-asyncapi.cjs docs/asyncapi.yaml
const path = require("node:path");
const { Parser, fromFile } = require("@asyncapi/parser");

async function main() {
  const file = path.resolve(process.argv[2]);
  const { document, diagnostics } = await fromFile(new Parser(), file).parse();
  const levels = ["error", "warning", "info", "hint"];
  for (const d of diagnostics) {
    console.error(`${levels[d.severity]}: ${d.message} at ${d.path.join(".")}`);
  }
  const errors = diagnostics.filter((d) => d.severity === 0).length;
  if (!document || errors > 0) {
    console.error(`asyncapi: ${file} is not valid (${errors} errors)`);
    process.exit(1);
  }
  console.error(
    `asyncapi: ${file} is valid: ${document.channels().length} channels, ${document.operations().length} operations`,
  );
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
