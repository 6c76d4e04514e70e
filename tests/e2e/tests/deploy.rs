//! What the schemas in `scripts/validate.sh` cannot see: that the
//! deployment files agree with each other and with the code.
//!
//! - Copilot: manifest names equal their directories; build paths resolve
//!   from `deploy/`; ports agree with the services' configuration and
//!   Dockerfiles; the consumer never runs more tasks than partitions; every
//!   `from_cfn` export, imported value and Secrets Manager name is defined
//!   by an addon; the environment addons take the network as parameters,
//!   never imports of the environment stack they are nested in; the
//!   producer's load-balancer check asks liveness, and prod's databases
//!   have a reader; tasks run in private subnets; the consumer scales on
//!   its backlog per task; each service's metrics reach CloudWatch through
//!   its sidecar, its alarms notify, and the producer's deployments roll
//!   back on its 5xx alarm; no `RUST_LOG` turns the
//!   malformed-request error log back on; IAM policies and the lag-scaling override name the real
//!   topics and consumer group.
//! - Kafka settings: the topic table in `docs/config/topics.md`, the topic
//!   registry's defaults, the production replication factors,
//!   `docs/config/server.properties`, the compose file and the CI broker.
//! - Images: the binaries link only libraries the runtime image has;
//!   every image a deploy runs is pinned by digest.
//! - Deploys: CI gates them; what is deployed is decided against the
//!   commit each environment last received (`scripts/should-deploy.sh`);
//!   production gets test's image by digest; a new event type reaches the
//!   consumer before the producer; a deploy is smoke-tested
//!   before it is recorded; every deploy's CloudFormation
//!   passes cfn-lint, ours with no finding and Copilot's with only the
//!   named ones; Copilot's Lambda functions still deploy after
//!   `nodejs20.x`'s end of life; leaving Copilot has a date and names each
//!   dependency with its replacement; HTTPS on both load balancers; the
//!   Copilot installer checks its signature.
//!
//! No broker or database needed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use kafka_service::topics::{Topic, TopicRegistry, DEFAULT_PARTITIONS};
use yaml_rust2::{Yaml, YamlLoader};

const SERVICES: [&str; 2] = ["producer", "consumer"];
const ENVIRONMENTS: [&str; 2] = ["test", "prod"];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|error| panic!("{path}: {error}"))
}

fn yaml(path: &str) -> Yaml {
    YamlLoader::load_from_str(&read(path))
        .unwrap_or_else(|error| panic!("{path}: {error}"))
        .remove(0)
}

fn text<'a>(node: &'a Yaml, what: &str) -> &'a str {
    node.as_str()
        .unwrap_or_else(|| panic!("{what} is not a string: {node:?}"))
}

fn int(node: &Yaml, what: &str) -> i64 {
    match node {
        Yaml::Integer(value) => *value,
        Yaml::String(value) => value.parse().unwrap_or_else(|_| panic!("{what}: {value}")),
        other => panic!("{what} is not a number: {other:?}"),
    }
}

/// Every string anywhere in `node`, depth first.
fn strings(node: &Yaml) -> Vec<String> {
    match node {
        Yaml::String(value) => vec![value.clone()],
        Yaml::Array(items) => items.iter().flat_map(strings).collect(),
        Yaml::Hash(map) => map
            .iter()
            .flat_map(|(k, v)| strings(k).into_iter().chain(strings(v)))
            .collect(),
        _ => Vec::new(),
    }
}

/// What the environment stack hands its addons (not a template).
const ENVIRONMENT_ADDON_PARAMETERS: &str = "addons.parameters.yml";

fn addon_paths() -> Vec<String> {
    let mut paths = Vec::new();
    for dir in ["environments/addons", "producer/addons", "consumer/addons"] {
        let full = root().join("deploy/copilot").join(dir);
        for entry in std::fs::read_dir(&full).unwrap_or_else(|error| panic!("{}: {error}", full.display())) {
            let name = entry.unwrap().file_name().into_string().unwrap();
            if name.ends_with(".yml") && name != ENVIRONMENT_ADDON_PARAMETERS {
                paths.push(format!("deploy/copilot/{dir}/{name}"));
            }
        }
    }
    paths.sort();
    paths
}

/// Export names the environment addons define, without the
/// `${App}-${Env}-` prefix.
fn environment_exports() -> BTreeSet<String> {
    let mut exports = BTreeSet::new();
    for path in addon_paths().iter().filter(|p| p.contains("/environments/")) {
        let template = yaml(path);
        for (_, output) in template["Outputs"].as_hash().expect("Outputs") {
            if let Some(name) = output["Export"]["Name"].as_str() {
                let suffix = name
                    .strip_prefix("${App}-${Env}-")
                    .unwrap_or_else(|| panic!("{path}: export {name} is not named ${{App}}-${{Env}}-<Name>"));
                exports.insert(suffix.to_owned());
            }
        }
    }
    exports
}

/// Secrets Manager names the environment addons create, without the
/// `${App}/${Env}/` prefix, with the JSON keys each holds (empty: a plain
/// string).
fn environment_secrets() -> BTreeMap<String, BTreeSet<String>> {
    let mut secrets = BTreeMap::new();
    for path in addon_paths().iter().filter(|p| p.contains("/environments/")) {
        let template = yaml(path);
        for (_, resource) in template["Resources"].as_hash().expect("Resources") {
            if resource["Type"].as_str() != Some("AWS::SecretsManager::Secret") {
                continue;
            }
            let properties = &resource["Properties"];
            let name = text(&properties["Name"], "secret name");
            let name = name
                .strip_prefix("${App}/${Env}/")
                .expect("secret named ${App}/${Env}/...");
            let generate = &properties["GenerateSecretString"];
            let mut keys = BTreeSet::new();
            if let Some(template) = generate["SecretStringTemplate"].as_str() {
                let fields: serde_json::Value = serde_json::from_str(template).expect("SecretStringTemplate is JSON");
                keys.extend(fields.as_object().unwrap().keys().cloned());
                keys.insert(text(&generate["GenerateStringKey"], "GenerateStringKey").to_owned());
            }
            secrets.insert(name.to_owned(), keys);
        }
    }
    secrets
}

fn service_config(service: &str, file: &str) -> Yaml {
    yaml(&format!("services/{service}/configuration/{file}.yaml"))
}

fn http_port(service: &str) -> i64 {
    int(&service_config(service, "base")["http"]["port"], "http.port")
}

#[test]
fn copilot_manifest_names_equal_their_directories() {
    assert_eq!(read("deploy/copilot/.workspace").trim(), "application: kafka-example");
    for service in SERVICES {
        let manifest = yaml(&format!("deploy/copilot/{service}/manifest.yml"));
        assert_eq!(manifest["name"].as_str(), Some(service));
    }
    for environment in ENVIRONMENTS {
        let manifest = yaml(&format!("deploy/copilot/environments/{environment}/manifest.yml"));
        assert_eq!(manifest["name"].as_str(), Some(environment));
        assert_eq!(manifest["type"].as_str(), Some("Environment"));
    }
}

#[test]
fn copilot_build_paths_resolve_from_deploy() {
    let deploy = root().join("deploy");
    for service in SERVICES {
        let manifest = yaml(&format!("deploy/copilot/{service}/manifest.yml"));
        let build = &manifest["image"]["build"];
        let dockerfile = deploy.join(text(&build["dockerfile"], "dockerfile"));
        assert!(
            dockerfile.is_file(),
            "{service}: {} does not exist",
            dockerfile.display()
        );
        assert_eq!(
            dockerfile.canonicalize().unwrap(),
            root()
                .join(format!("services/{service}/Dockerfile"))
                .canonicalize()
                .unwrap()
        );
        let context = deploy.join(text(&build["context"], "context")).canonicalize().unwrap();
        assert_eq!(
            context,
            root().canonicalize().unwrap(),
            "{service}: the context is the repository root"
        );
    }
}

#[test]
fn ports_agree_across_configuration_dockerfiles_manifests_and_compose() {
    let compose = yaml("compose.yaml");
    for service in SERVICES {
        let port = http_port(service);
        let manifest = yaml(&format!("deploy/copilot/{service}/manifest.yml"));
        assert_eq!(
            int(&manifest["image"]["port"], "image.port"),
            port,
            "{service}: image.port"
        );

        let dockerfile = read(&format!("services/{service}/Dockerfile"));
        assert!(
            dockerfile.contains(&format!("\nEXPOSE {port}\n")),
            "{service}: Dockerfile EXPOSE {port}"
        );
        let healthcheck = format!("[\"/usr/local/bin/{service}\", \"healthcheck\"]");
        assert!(
            dockerfile.contains(&healthcheck),
            "{service}: Dockerfile HEALTHCHECK runs {healthcheck}"
        );
        let command: Vec<&str> = manifest["image"]["healthcheck"]["command"]
            .as_vec()
            .expect("image.healthcheck.command")
            .iter()
            .map(|part| text(part, "command"))
            .collect();
        assert_eq!(command, ["CMD", &format!("/usr/local/bin/{service}"), "healthcheck"]);

        let container = &compose["services"][service];
        assert_eq!(
            text(&container["environment"]["APP_HTTP__PORT"], "APP_HTTP__PORT"),
            port.to_string()
        );
        let published: Vec<&str> = container["ports"]
            .as_vec()
            .unwrap()
            .iter()
            .map(|p| text(p, "port"))
            .collect();
        assert_eq!(
            published,
            [format!("127.0.0.1:{port}:{port}")],
            "{service}: published on loopback only"
        );
    }

    let consumer = yaml("deploy/copilot/consumer/manifest.yml");
    assert_eq!(
        int(&consumer["nlb"]["target_port"], "nlb.target_port"),
        http_port("consumer")
    );
    assert_eq!(
        int(&consumer["nlb"]["healthcheck"]["port"], "nlb.healthcheck.port"),
        http_port("consumer")
    );
    // The consumer derives the producer's address from service discovery
    // with this port.
    let consumer_source = read("services/consumer/src/configuration.rs");
    assert!(
        consumer_source.contains(&format!(":{}", http_port("producer"))),
        "the consumer's derived producer URL uses port {}",
        http_port("producer")
    );
}

#[test]
fn the_consumer_never_runs_more_tasks_than_partitions() {
    let manifest = yaml("deploy/copilot/consumer/manifest.yml");
    let range = text(&manifest["count"]["range"], "count.range");
    let (min, max) = range.split_once('-').expect("count.range is min-max");
    let (min, max): (i32, i32) = (min.parse().unwrap(), max.parse().unwrap());
    let registry = TopicRegistry::default();
    let fewest = Topic::EVENTS
        .iter()
        .map(|&topic| registry.spec(topic).partitions)
        .min()
        .unwrap();
    assert!(1 <= min && min <= max, "count.range {range}");
    assert!(
        max <= fewest,
        "count.range {range}: more than {fewest} tasks would sit idle"
    );
}

#[test]
fn every_import_export_and_secret_the_services_use_is_defined() {
    let exports = environment_exports();
    let secrets = environment_secrets();
    // Exported by every Copilot environment stack (the load balancer's once
    // a service uses it, as the producer does): see the `Outputs` of
    // `.run/copilot-render/out/<env>/<env>.env.yml`.
    let copilot = [
        "VpcId",
        "PrivateSubnets",
        "PublicSubnets",
        "EnvironmentSecurityGroup",
        "ClusterId",
        "PublicLoadBalancerFullName",
    ];

    for service in SERVICES {
        let path = format!("deploy/copilot/{service}/manifest.yml");
        let manifest = yaml(&path);
        let mut from_cfn = Vec::new();
        for section in ["variables", "secrets"] {
            for (name, value) in manifest[section].as_hash().into_iter().flatten() {
                let name = text(name, "variable");
                if let Some(export) = value["from_cfn"].as_str() {
                    from_cfn.push((name.to_owned(), export.to_owned()));
                }
                if let Some(secret) = value["secretsmanager"].as_str() {
                    let secret = secret
                        .strip_prefix("${COPILOT_APPLICATION_NAME}/${COPILOT_ENVIRONMENT_NAME}/")
                        .unwrap_or_else(|| panic!("{path}: {name}: secret outside the app and environment"));
                    let (secret_name, key) = match secret.split_once(':') {
                        Some((secret_name, rest)) => (secret_name, rest.split(':').next().unwrap_or("")),
                        None => (secret, ""),
                    };
                    let keys = secrets
                        .get(secret_name)
                        .unwrap_or_else(|| panic!("{path}: {name}: no addon creates secret {secret_name}"));
                    assert!(
                        key.is_empty() || keys.contains(key),
                        "{path}: {name}: secret {secret_name} has no key {key} (keys: {keys:?})"
                    );
                }
            }
        }
        for (name, export) in &from_cfn {
            let suffix = export
                .strip_prefix("${COPILOT_APPLICATION_NAME}-${COPILOT_ENVIRONMENT_NAME}-")
                .unwrap_or_else(|| panic!("{path}: {name}: export {export} is outside the app and environment"));
            assert!(
                exports.contains(suffix),
                "{path}: {name}: no environment addon exports {suffix} (exports: {exports:?})"
            );
        }
        for required in [
            "APP_DATABASE__URL",
            "APP_KAFKA__BOOTSTRAP_SERVERS",
            "APP_KAFKA__SECURITY__REGION",
        ] {
            assert!(from_cfn.iter().any(|(name, _)| name == required), "{path}: {required}");
        }
        assert_eq!(manifest["variables"]["APP_ENVIRONMENT"].as_str(), Some("production"));
    }

    for path in addon_paths() {
        let template = read(&path);
        for import in template.split("Fn::ImportValue: !Sub \"${App}-${Env}-").skip(1) {
            let name = import.split('"').next().unwrap();
            assert!(
                exports.contains(name) || copilot.contains(&name),
                "{path}: imports {name}, which neither Copilot nor an environment addon exports"
            );
        }
    }
}

/// Copilot nests the environment addons in the environment stack, in the
/// same update that creates its exports, with no dependency on them: an
/// addon that imported one (`Fn::ImportValue` of `${App}-${Env}-VpcId`)
/// rolled back the first `copilot env deploy` of a new environment
/// ("No export named …"; copilot-cli #4754, #5014, #5772). The network
/// comes as parameters from `addons.parameters.yml` instead, as in
/// Copilot's own Aurora environment addon: every parameter an addon
/// declares besides `App` and `Env` is given there, from the environment
/// template's own resources, and nothing given there goes unused.
#[test]
fn environment_addons_take_the_network_as_parameters_not_imports() {
    // Logical ids of Copilot's environment template (v1.34, a VPC it
    // creates, two private subnets).
    let environment_resources = ["VPC", "PrivateSubnet1", "PrivateSubnet2", "EnvironmentSecurityGroup"];
    let parameters_path = format!("deploy/copilot/environments/addons/{ENVIRONMENT_ADDON_PARAMETERS}");
    let given = yaml(&parameters_path);
    let given = given["Parameters"].as_hash().expect("Parameters");
    let mut declared = BTreeSet::new();
    for path in addon_paths().iter().filter(|p| p.contains("/environments/")) {
        assert!(
            !read(path).contains("ImportValue"),
            "{path} imports a value; the environment's exports do not exist yet on its first deploy"
        );
        for (name, _) in yaml(path)["Parameters"].as_hash().expect("Parameters") {
            let name = text(name, "parameter");
            if name != "App" && name != "Env" {
                assert!(
                    given.contains_key(&Yaml::String(name.to_owned())),
                    "{path}: parameter {name} is not given in {parameters_path}"
                );
                declared.insert(name.to_owned());
            }
        }
    }
    for (name, value) in given {
        let name = text(name, "parameter");
        assert!(
            declared.contains(name),
            "{parameters_path}: {name} is given but no addon declares it"
        );
        let source = read(&parameters_path);
        let line = source
            .lines()
            .find(|line| line.trim_start().starts_with(&format!("{name}:")))
            .unwrap_or_else(|| panic!("{parameters_path}: {name}"));
        let refs: Vec<&str> = line
            .split("!Ref ")
            .skip(1)
            .map(|rest| rest.split([',', ']', ' ']).next().unwrap())
            .collect();
        assert!(
            !refs.is_empty(),
            "{parameters_path}: {name} refers to nothing: {value:?}"
        );
        for reference in refs {
            assert!(
                environment_resources.contains(&reference),
                "{parameters_path}: {name} refers to {reference}, not a resource of Copilot's environment template"
            );
        }
    }
}

/// ECS replaces a task that its target group reports unhealthy, as it does
/// one whose container check fails: the producer's load-balancer check asks
/// liveness, what a restart fixes, and never readiness, which needs the
/// database (a failover would cycle every task). prod's database clusters
/// each have a reader for Aurora to promote; test's have the writer alone.
#[test]
fn load_balancer_checks_ask_liveness_and_prod_databases_have_a_reader_to_fail_over_to() {
    let producer = yaml("deploy/copilot/producer/manifest.yml");
    assert_eq!(
        text(
            &producer["http"]["healthcheck"]["path"],
            "producer http.healthcheck.path"
        ),
        service_common::health::CONTAINER_CHECK_PATH
    );
    let databases = yaml("deploy/copilot/environments/addons/databases.yml");
    assert_eq!(
        databases["Conditions"]["IsProd"],
        Yaml::Array(vec![Yaml::String("Env".into()), Yaml::String("prod".into())]),
        "IsProd: !Equals [!Ref Env, prod]"
    );
    let resources = databases["Resources"].as_hash().expect("Resources");
    for cluster in ["ProducerDatabaseCluster", "ConsumerDatabaseCluster"] {
        let conditions: Vec<Option<&str>> = resources
            .values()
            .filter(|resource| {
                resource["Type"].as_str() == Some("AWS::RDS::DBInstance")
                    && resource["Properties"]["DBClusterIdentifier"].as_str() == Some(cluster)
            })
            .map(|instance| instance["Condition"].as_str())
            .collect();
        assert_eq!(
            conditions,
            vec![None, Some("IsProd")],
            "{cluster}: a writer everywhere and a reader in prod"
        );
    }
}

/// The statements of `sql` that take away what older code may still use,
/// so that the release before could not run on the schema after them:
/// dropping or renaming a table or a column, changing a column's type,
/// making a column `NOT NULL`, or adding one `NOT NULL` without a default
/// (the older code's inserts leave it out). Indexes, constraints and
/// triggers are not in the list: older code does not name them.
fn contract_statements(sql: &str) -> Vec<String> {
    let without_comments: String = sql
        .lines()
        .map(|line| line.split("--").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join(" ");
    without_comments
        .split(';')
        .map(|statement| {
            statement
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
                .to_uppercase()
        })
        .filter(|statement| {
            let words: Vec<&str> = statement.split(' ').collect();
            let dropped_column = words.windows(2).any(|pair| {
                pair[0] == "DROP" && !matches!(pair[1], "CONSTRAINT" | "DEFAULT" | "NOT" | "IDENTITY" | "EXPRESSION")
            });
            statement.starts_with("DROP TABLE")
                || (statement.starts_with("ALTER TABLE")
                    && (dropped_column
                        || statement.contains(" RENAME ")
                        || (statement.contains(" ALTER COLUMN ") && statement.contains(" TYPE "))
                        || statement.contains(" SET NOT NULL")
                        || (statement.contains(" ADD ")
                            && statement.contains(" NOT NULL")
                            && !statement.contains(" DEFAULT "))))
        })
        .collect()
}

#[test]
fn contract_statements_are_the_ones_older_code_would_trip_on() {
    for sql in [
        "ALTER TABLE users DROP COLUMN email;",
        "alter table users drop email",
        "DROP TABLE IF EXISTS outbox;",
        "ALTER TABLE users RENAME COLUMN email TO mail;",
        "ALTER TABLE users RENAME TO accounts;",
        "ALTER TABLE users ALTER COLUMN email TYPE varchar(10);",
        "ALTER TABLE users ALTER COLUMN email SET NOT NULL;",
        "ALTER TABLE users ADD COLUMN plan text NOT NULL;",
    ] {
        assert_eq!(contract_statements(sql).len(), 1, "{sql}");
    }
    for sql in [
        "DROP INDEX outbox_pending;",
        "ALTER TABLE users ADD COLUMN plan text;",
        "ALTER TABLE users ADD COLUMN plan text NOT NULL DEFAULT 'free';",
        "ALTER TABLE users DROP CONSTRAINT users_email_key;",
        "ALTER TABLE users ALTER COLUMN plan DROP DEFAULT;",
        "-- ALTER TABLE users DROP COLUMN email;\nSELECT 1;",
        "CREATE TABLE dropped_things (id int);",
    ] {
        assert!(contract_statements(sql).is_empty(), "{sql}");
    }
}

/// Rollbacks need the release before to run on today's schema
/// (`system/database::the_release_before_starts_…` starts it): migrations
/// expand the schema in the release that needs it, and contract it only
/// in a later one. A migration with a contract statement must say, in a
/// line `-- contract: <name> unused since <commit>`, which released commit
/// stopped using what it removes; that commit must come before the one
/// that adds the migration, and no service source may name it now.
#[test]
fn migrations_contract_only_what_an_earlier_release_stopped_using() {
    for service in SERVICES {
        let dir = root().join(format!("services/{service}/migrations"));
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let sql = std::fs::read_to_string(&path).unwrap();
            let contracts = contract_statements(&sql);
            if contracts.is_empty() {
                continue;
            }
            let file = path.display();
            let header = sql
                .lines()
                .find_map(|line| line.strip_prefix("-- contract: "))
                .unwrap_or_else(|| {
                    panic!("{file} contracts the schema ({contracts:?}) without a `-- contract: <name> unused since <commit>` line")
                });
            let (name, commit) = header
                .split_once(" unused since ")
                .unwrap_or_else(|| panic!("{file}: `-- contract: {header}`"));
            let relative = path.strip_prefix(root()).unwrap_or(&path).display().to_string();
            let added = git(&root(), &["log", "--diff-filter=A", "--format=%H", "--", &relative]);
            let added = added.lines().last().unwrap_or("HEAD");
            assert_ne!(
                git(&root(), &["rev-parse", commit.trim()]),
                git(&root(), &["rev-parse", added]),
                "{file}: contracts in the release that stops using {name}"
            );
            let ancestor = std::process::Command::new("git")
                .current_dir(root())
                .args(["merge-base", "--is-ancestor", commit.trim(), added])
                .status()
                .unwrap();
            assert!(
                ancestor.success(),
                "{file}: {commit} does not come before the migration"
            );
            for source in ["services/producer/src", "services/consumer/src"] {
                let found = std::process::Command::new("grep")
                    .current_dir(root())
                    .args(["-rqw", name.trim(), source])
                    .status()
                    .unwrap();
                assert!(!found.success(), "{file}: {source} still names {name}");
            }
        }
    }
}

/// The consumer scales on its lag per running task, the backlog each task
/// works off, not on the group's total; a period without figures stays
/// missing (no `FILL`), so target tracking does not read a gap in MSK's
/// metrics as no lag and scale in. The task count comes from Container
/// Insights, which both environments turn on.
#[test]
fn the_consumer_scales_on_its_backlog_per_task_and_not_on_missing_data() {
    let patches = read("deploy/copilot/consumer/overrides/cfn.patches.yml");
    let patches = YamlLoader::load_from_str(&patches).unwrap().remove(0);
    let policy = patches
        .as_vec()
        .expect("a list of patches")
        .iter()
        .find(|patch| patch["path"].as_str() == Some("/Resources/AutoScalingPolicyConsumerLag"))
        .expect("the lag policy");
    let metrics = policy["value"]["Properties"]["TargetTrackingScalingPolicyConfiguration"]
        ["CustomizedMetricSpecification"]["Metrics"]
        .as_vec()
        .expect("metrics");
    let returned: Vec<&Yaml> = metrics
        .iter()
        .filter(|metric| metric["ReturnData"] == Yaml::Boolean(true))
        .collect();
    assert_eq!(returned.len(), 1, "one figure is tracked");
    let expression = text(&returned[0]["Expression"], "Expression");
    assert!(
        !expression.to_uppercase().contains("FILL"),
        "missing data stays missing: {expression}"
    );
    let tasks = metrics
        .iter()
        .find(|metric| metric["MetricStat"]["Metric"]["MetricName"].as_str() == Some("RunningTaskCount"))
        .expect("the running task count");
    let tasks_id = text(&tasks["Id"], "Id");
    assert!(
        expression.ends_with(&format!("/ {tasks_id}")),
        "lag divided by the tasks: {expression}"
    );
    for environment in ENVIRONMENTS {
        let manifest = yaml(&format!("deploy/copilot/environments/{environment}/manifest.yml"));
        assert_eq!(
            manifest["observability"]["container_insights"],
            Yaml::Boolean(true),
            "{environment}: Container Insights gives RunningTaskCount"
        );
    }
}

/// Each environment's deploy takes its credentials from its own GitHub
/// environment (`AWS_DEPLOY_ROLE_ARN` there), so the test role cannot reach
/// prod, and `deploy/README.md` scopes each role to its environment: its
/// own EnvManagerRole and deploy records, and the GitHub environments to
/// `main`.
#[test]
fn each_environment_deploys_with_a_role_of_its_own() {
    let workflow = yaml(".github/workflows/deploy-service.yml");
    for environment in ENVIRONMENTS {
        let job = &workflow["jobs"][environment];
        assert_eq!(job["environment"].as_str(), Some(environment), "job {environment}");
        let credentials = job["steps"]
            .as_vec()
            .expect("steps")
            .iter()
            .find(|step| {
                step["uses"]
                    .as_str()
                    .is_some_and(|uses| uses.starts_with("aws-actions/configure-aws-credentials@"))
            })
            .expect("configure-aws-credentials");
        assert_eq!(
            credentials["with"]["role-to-assume"].as_str(),
            Some("${{ vars.AWS_DEPLOY_ROLE_ARN }}"),
            "{environment}: the role comes from the GitHub environment"
        );
    }
    let readme = read("deploy/README.md");
    for scoped in [
        "role/kafka-example-<env>-EnvManagerRole",
        "parameter/kafka-example/<env>/*/deployed-*",
        "sub` = `repo:<owner>/<repo>:environment:<env>",
        "deployment branches\n  limited to `main`",
    ] {
        assert!(readme.contains(scoped), "deploy/README.md scopes the roles: {scoped}");
    }
}

/// The CloudWatch alarms of a service: from its addons' templates and its
/// overrides, by the name after `<app>-<env>-<service>-`.
fn service_alarms(service: &str) -> BTreeMap<String, Yaml> {
    let mut alarms = BTreeMap::new();
    let mut add = |resource: &Yaml| {
        if resource["Type"].as_str() == Some("AWS::CloudWatch::Alarm") {
            // `!Sub` in an addon; the long form `Fn::Sub` in an override.
            let name = &resource["Properties"]["AlarmName"];
            let name = name.as_str().or(name["Fn::Sub"].as_str()).unwrap_or_default();
            let suffix = name
                .strip_prefix("${App}-${Env}-${Name}-")
                .or_else(|| name.strip_prefix("${AppName}-${EnvName}-${WorkloadName}-"))
                .unwrap_or_else(|| panic!("{service}: alarm {name} is not named <app>-<env>-<service>-<what>"));
            alarms.insert(suffix.to_owned(), resource["Properties"].clone());
        }
    };
    for path in addon_paths()
        .iter()
        .filter(|path| path.contains(&format!("/{service}/")))
    {
        for (_, resource) in yaml(path)["Resources"].as_hash().into_iter().flatten() {
            add(resource);
        }
    }
    for patch in yaml(&format!("deploy/copilot/{service}/overrides/cfn.patches.yml"))
        .as_vec()
        .expect("a list of patches")
    {
        add(&patch["value"]);
    }
    alarms
}

/// Every metric name a service's code registers (the quoted first argument
/// of its registrations), with the `_total` that counters are exposed with.
fn registers_metric(service: &str, name: &str) -> bool {
    fn sources(dir: &Path, out: &mut String) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                sources(&path, out);
            } else if path.extension().is_some_and(|extension| extension == "rs") {
                out.push_str(&std::fs::read_to_string(&path).unwrap());
            }
        }
    }
    let mut code = String::new();
    sources(&root().join(format!("services/{service}/src")), &mut code);
    let registered = name.strip_suffix("_total").unwrap_or(name);
    code.contains(&format!("\"{registered}\""))
}

/// Something in AWS reads the metrics, and a deployment that does not work
/// is rolled back (issue 25, item 6). Each service's `metrics` sidecar
/// scrapes the service's own port and writes, to the log group and
/// namespace its alarms read, exactly the series those alarms use, each
/// one the service registers. The alarms are the ones the runbooks need
/// (lag in time and in records, dead letters, the oldest pending and
/// failing outbox rows, 5xx, running tasks below desired); each states
/// what missing data means and notifies the environment's alarm topic; and
/// the producer's deployments roll back on its 5xx alarm.
#[test]
fn the_services_metrics_reach_cloudwatch_and_alarms_notify_and_roll_back() {
    assert!(environment_exports().contains("AlarmTopicArn"));
    let expected: [(&str, &[&str]); 2] = [
        (
            "producer",
            &[
                "http-5xx",
                "outbox-pending-too-old",
                "outbox-row-failing",
                "tasks-below-desired",
            ],
        ),
        (
            "consumer",
            &["dead-letters", "lag-records", "lag-time", "tasks-below-desired"],
        ),
    ];
    for (service, wanted) in expected {
        let manifest = yaml(&format!("deploy/copilot/{service}/manifest.yml"));
        let sidecar = &manifest["sidecars"]["metrics"];
        assert_eq!(
            sidecar["essential"].as_bool(),
            Some(false),
            "{service}: the service outlives its sidecar"
        );
        let config = YamlLoader::load_from_str(text(
            &sidecar["variables"]["AOT_CONFIG_CONTENT"],
            "the collector's configuration",
        ))
        .unwrap()
        .remove(0);
        let scrape = &config["receivers"]["prometheus"]["config"]["scrape_configs"][0];
        assert_eq!(
            strings(&scrape["static_configs"][0]["targets"]),
            [format!("localhost:{}", http_port(service))],
            "{service}: the sidecar scrapes the service's port"
        );
        let emf = &config["exporters"]["awsemf"];
        assert_eq!(
            text(&emf["log_group_name"], "log_group_name"),
            format!("/copilot/${{COPILOT_APPLICATION_NAME}}-${{COPILOT_ENVIRONMENT_NAME}}-{service}-metrics")
        );
        assert_eq!(
            text(&emf["namespace"], "namespace"),
            "${COPILOT_APPLICATION_NAME}/${COPILOT_ENVIRONMENT_NAME}"
        );
        let log_group = yaml(&format!("deploy/copilot/{service}/addons/observability.yml"))["Resources"]
            ["MetricsLogGroup"]["Properties"]["LogGroupName"]
            .clone();
        assert_eq!(
            text(&log_group, "LogGroupName"),
            "/copilot/${App}-${Env}-${Name}-metrics"
        );
        let exported: BTreeSet<String> = emf["metric_declarations"]
            .as_vec()
            .expect("metric_declarations")
            .iter()
            .flat_map(|declaration| strings(&declaration["metric_name_selectors"]))
            .collect();

        let alarms = service_alarms(service);
        assert_eq!(
            alarms.keys().map(String::as_str).collect::<Vec<_>>(),
            wanted,
            "{service}: its alarms"
        );
        let mut read_from_the_sidecar = BTreeSet::new();
        for (name, alarm) in &alarms {
            assert!(
                ["breaching", "notBreaching", "ignore", "missing"]
                    .contains(&alarm["TreatMissingData"].as_str().unwrap_or("")),
                "{service}: {name} states what missing data means"
            );
            for actions in ["AlarmActions", "OKActions"] {
                assert!(
                    strings(&alarm[actions])
                        .iter()
                        .any(|value| value.ends_with("-AlarmTopicArn")),
                    "{service}: {name}: {actions} notify the environment's alarm topic"
                );
            }
            if alarm["Namespace"].as_str() == Some("${App}/${Env}") {
                let metric = text(&alarm["MetricName"], "MetricName");
                assert!(
                    exported.contains(metric),
                    "{service}: {name} reads {metric}, which the sidecar does not export"
                );
                assert!(
                    registers_metric(service, metric),
                    "{service}: {name} reads {metric}, which the service does not register"
                );
                read_from_the_sidecar.insert(metric.to_owned());
            }
        }
        assert_eq!(
            exported, read_from_the_sidecar,
            "{service}: the sidecar exports what the alarms read, no more"
        );
    }

    let producer = yaml("deploy/copilot/producer/manifest.yml");
    assert_eq!(
        strings(&producer["deployment"]["rollback_alarms"]),
        ["${COPILOT_APPLICATION_NAME}-${COPILOT_ENVIRONMENT_NAME}-producer-http-5xx"],
        "the producer's deployments roll back on its 5xx alarm"
    );
}

/// The deploy jobs hold AWS credentials, so the cfn-lint they run is
/// installed from hashes: every package of
/// `scripts/cfn-lint.requirements.txt` pinned with `--hash`, installed with
/// `--require-hashes --no-deps`, cfn-lint at the version the validators use.
#[test]
fn the_deploy_installs_its_template_linter_from_hashes() {
    let requirements = read("scripts/cfn-lint.requirements.txt");
    let mut pinned = Vec::new();
    for entry in requirements
        .split("\n")
        .filter(|line| !line.starts_with(' ') && !line.starts_with('#') && !line.is_empty())
    {
        let (name, _) = entry.split_once("==").unwrap_or_else(|| panic!("not pinned: {entry}"));
        pinned.push(name.to_owned());
    }
    let blocks: Vec<&str> = requirements.split("\n").collect();
    for (index, line) in blocks.iter().enumerate() {
        if line.contains("==") && !line.starts_with('#') {
            assert!(
                blocks
                    .get(index + 1)
                    .is_some_and(|next| next.trim_start().starts_with("--hash=sha256:")),
                "{line} has no hash"
            );
        }
    }
    let version = read("scripts/validators.txt")
        .lines()
        .find_map(|line| line.strip_prefix("cfn-lint=="))
        .expect("cfn-lint in validators.txt")
        .to_owned();
    assert!(
        requirements.contains(&format!("cfn-lint=={version} ")),
        "cfn-lint {version}"
    );
    assert!(pinned.len() > 1, "its dependencies too: {pinned:?}");

    let workflow = read(".github/workflows/deploy-service.yml");
    assert!(!workflow.contains("pipx install"), "nothing installed without hashes");
    let installs = workflow
        .matches("install --quiet --require-hashes --no-deps -r scripts/cfn-lint.requirements.txt")
        .count();
    let packages = workflow
        .matches("scripts/package-cloudformation.sh \"$SERVICE\"")
        .count();
    assert_eq!(installs, packages, "every job that lints installs from hashes");
}

/// Tasks run in the private subnets, reachable only through their load
/// balancers (deploy/README.md, "Network").
#[test]
fn tasks_run_in_private_subnets() {
    for service in SERVICES {
        let manifest = yaml(&format!("deploy/copilot/{service}/manifest.yml"));
        assert_eq!(
            manifest["network"]["vpc"]["placement"].as_str(),
            Some("private"),
            "{service}: network.vpc.placement"
        );
    }
}

/// actix-http logs each malformed client request at error level, though it
/// already answered `400`; the services' default log filter turns that off
/// (`DEFAULT_LOG_FILTER`), and a `RUST_LOG` that does not would turn it
/// back on for any client to flood. Neither Copilot nor compose sets one
/// without it.
#[test]
fn no_deployment_turns_the_malformed_request_error_log_back_on() {
    let directive = "actix_http::h1::dispatcher=off";
    assert!(service_common::run::DEFAULT_LOG_FILTER.contains(directive));
    let compose = yaml("compose.yaml");
    for service in SERVICES {
        let manifest = yaml(&format!("deploy/copilot/{service}/manifest.yml"));
        for (file, filter) in [
            ("manifest", &manifest["variables"]["RUST_LOG"]),
            ("compose.yaml", &compose["services"][service]["environment"]["RUST_LOG"]),
        ] {
            if let Some(filter) = filter.as_str() {
                assert!(
                    filter.contains(directive),
                    "{service}'s {file} sets RUST_LOG={filter}, without {directive}"
                );
            }
        }
    }
}

#[test]
fn iam_policies_and_the_lag_override_name_the_real_topics_and_group() {
    let registry = TopicRegistry::default();
    let group = service_config("consumer", "base")["kafka"]["group_id"]
        .as_str()
        .unwrap()
        .to_owned();

    let producer_policy = read("deploy/copilot/producer/addons/kafka-access.yml");
    for topic in Topic::EVENTS {
        assert!(
            producer_policy.contains(&format!("/{}\"", registry.name(topic))),
            "the producer may write {}",
            registry.name(topic)
        );
    }
    let consumer_policy = read("deploy/copilot/consumer/addons/kafka-access.yml");
    assert!(consumer_policy.contains(&format!("group/${{Cluster}}/{group}\"")));
    assert!(consumer_policy.contains("topic/${Cluster}/*\""));

    let patch = yaml("deploy/copilot/consumer/overrides/cfn.patches.yml");
    let values = strings(&patch[0]["value"]);
    assert!(values.contains(&group), "the lag metric is the group {group}'s");
    for topic in Topic::EVENTS {
        assert!(
            values.iter().any(|v| v == registry.name(topic)),
            "lag of {}",
            registry.name(topic)
        );
    }
    // The metric's cluster name is the one the environment addon creates.
    let kafka = yaml("deploy/copilot/environments/addons/kafka.yml");
    assert_eq!(
        kafka["Resources"]["KafkaCluster"]["Properties"]["ClusterName"].as_str(),
        Some("${App}-${Env}")
    );
    assert!(values.iter().any(|v| v == "${AppName}-${EnvName}"));
}

/// `docs/config/topics.md`'s table, by topic name: (partitions,
/// "local / production" replication factors, retention cell).
fn topic_table() -> BTreeMap<String, (i32, String, String)> {
    read("docs/config/topics.md")
        .lines()
        .filter(|line| line.starts_with("| `"))
        .map(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            (
                cells[1].trim_matches('`').to_owned(),
                (cells[2].parse().unwrap(), cells[3].to_owned(), cells[5].to_owned()),
            )
        })
        .collect()
}

#[test]
fn the_topic_table_agrees_with_the_registry_and_production_settings() {
    let table = topic_table();
    let registry = TopicRegistry::default();
    assert_eq!(table.len(), Topic::ALL.len(), "one row per topic: {table:?}");
    let production = service_config("consumer", "production");
    let keys = [
        (Topic::NewUserCreated, "new_user_created"),
        (Topic::IssuedToken, "issued_token"),
        (Topic::Retry, "retry"),
        (Topic::DeadLetter, "dead_letter"),
    ];
    for (topic, key) in keys {
        let spec = registry.spec(topic);
        let (partitions, replication, retention) = table
            .get(&spec.name)
            .unwrap_or_else(|| panic!("{} has no row in docs/config/topics.md", spec.name));
        assert_eq!(*partitions, spec.partitions, "{}: partitions", spec.name);
        let production_factor = int(
            &production["kafka"]["topics"][key]["replication_factor"],
            "replication_factor",
        );
        assert_eq!(
            replication,
            &format!("{} / {production_factor}", spec.replication_factor),
            "{}: replication factors",
            spec.name
        );
        match spec.retention_ms {
            Some(ms) => assert!(
                retention.contains(&format!("retention.ms={ms}")),
                "{}: {retention}",
                spec.name
            ),
            None => assert!(retention.starts_with("broker default"), "{}: {retention}", spec.name),
        }
    }
    // The producer's production settings give its topics the same factor.
    let producer = service_config("producer", "production");
    for key in ["new_user_created", "issued_token"] {
        assert_eq!(
            producer["kafka"]["topics"][key]["replication_factor"],
            production["kafka"]["topics"][key]["replication_factor"]
        );
    }
}

/// `server.properties` as key → value.
fn server_properties() -> BTreeMap<String, String> {
    read("docs/config/server.properties")
        .lines()
        .filter(|line| !line.starts_with('#') && line.contains('='))
        .map(|line| {
            let (key, value) = line.split_once('=').unwrap();
            (key.trim().to_owned(), value.trim().to_owned())
        })
        .collect()
}

/// `KAFKA_*` variables of the apache/kafka image as properties
/// (`KAFKA_NUM_PARTITIONS` → `num.partitions`).
fn as_properties(environment: &Yaml) -> BTreeMap<String, String> {
    environment
        .as_hash()
        .expect("environment mapping")
        .iter()
        .filter_map(|(key, value)| {
            let key = key.as_str()?.strip_prefix("KAFKA_")?;
            let value = match value {
                Yaml::Integer(number) => number.to_string(),
                other => text(other, key).to_owned(),
            };
            Some((key.to_lowercase().replace('_', "."), value))
        })
        .collect()
}

#[test]
fn server_properties_compose_and_ci_configure_the_same_broker() {
    let properties = server_properties();
    assert_eq!(properties["num.partitions"], DEFAULT_PARTITIONS.to_string());
    assert_eq!(properties["auto.create.topics.enable"], "false");

    let compose = yaml("compose.yaml");
    let compose_kafka = as_properties(&compose["services"]["kafka"]["environment"]);
    let workflow = yaml(".github/workflows/ci.yml");
    let ci_kafka = as_properties(&workflow["jobs"]["test"]["services"]["kafka"]["env"]);

    // The listeners differ by where the clients are; storage is the image's.
    let placement = [
        "listeners",
        "advertised.listeners",
        "listener.security.protocol.map",
        "inter.broker.listener.name",
        "controller.quorum.voters",
        "log.dirs",
    ];
    for (key, value) in properties.iter().filter(|(key, _)| !placement.contains(&key.as_str())) {
        assert_eq!(compose_kafka.get(key), Some(value), "compose.yaml: {key}");
        assert_eq!(ci_kafka.get(key), Some(value), "ci.yml: {key}");
    }
    for (key, _) in compose_kafka.iter().chain(&ci_kafka) {
        assert!(
            properties.contains_key(key),
            "{key} is set for a broker but not in server.properties"
        );
    }
    // Same listeners in compose as in server.properties.
    for key in placement.iter().filter(|&&key| key != "log.dirs") {
        assert_eq!(compose_kafka.get(*key), properties.get(*key), "compose.yaml: {key}");
    }
    // Services in compose use the Docker listener; the CI tests use the
    // runner's.
    let docker_listener = properties["advertised.listeners"]
        .split(',')
        .find_map(|listener| listener.strip_prefix("DOCKER://"))
        .expect("a DOCKER listener");
    for service in SERVICES {
        assert_eq!(
            compose["services"][service]["environment"]["APP_KAFKA__BOOTSTRAP_SERVERS"].as_str(),
            Some(docker_listener)
        );
    }
    let ci_listener = ci_kafka["advertised.listeners"].split("://").nth(1).unwrap();
    assert_eq!(
        workflow["jobs"]["test"]["env"]["TEST_KAFKA_BOOTSTRAP_SERVERS"].as_str(),
        Some(ci_listener)
    );
    // Host clients reach compose's broker at the services' local default.
    let host_listener = properties["advertised.listeners"]
        .split(',')
        .find_map(|listener| listener.strip_prefix("HOST://"))
        .expect("a HOST listener");
    for service in SERVICES {
        assert_eq!(
            service_config(service, "local")["kafka"]["bootstrap_servers"].as_str(),
            Some(host_listener)
        );
    }
}

/// Shared libraries of the runtime image, `gcr.io/distroless/cc-debian12`:
/// glibc, libgcc and OpenSSL 3 (distroless's `base` and `cc` package lists).
const RUNTIME_LIBRARIES: [&str; 10] = [
    "linux-vdso.so.1",
    "ld-linux-x86-64.so.2",
    "libc.so.6",
    "libm.so.6",
    "libdl.so.2",
    "libpthread.so.0",
    "librt.so.1",
    "libgcc_s.so.1",
    "libssl.so.3",
    "libcrypto.so.3",
];

#[test]
fn the_binaries_link_only_what_the_runtime_image_has() {
    for service in SERVICES {
        let binary = e2e::process::binary(service);
        let output = std::process::Command::new("ldd")
            .arg(&binary)
            .output()
            .expect("ldd runs");
        assert!(output.status.success(), "ldd {}: {:?}", binary.display(), output);
        let listing = String::from_utf8(output.stdout).unwrap();
        let linked: Vec<&str> = listing
            .lines()
            .filter_map(|line| line.split_whitespace().next())
            .map(|library| library.rsplit('/').next().unwrap())
            .collect();
        assert!(linked.contains(&"libc.so.6"), "{service}: {listing}");
        let foreign: Vec<&&str> = linked.iter().filter(|lib| !RUNTIME_LIBRARIES.contains(lib)).collect();
        assert!(
            foreign.is_empty(),
            "{service} links {foreign:?}, which the runtime image lacks:\n{listing}"
        );
    }
}

/// Whether `image` names a digest: `<name>@sha256:<64 lowercase hex>`, with
/// or without a tag before the `@`.
fn pinned_by_digest(image: &str) -> bool {
    let Some((name, digest)) = image.split_once("@sha256:") else {
        return false;
    };
    !name.is_empty() && digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Every image a deploy runs is pinned by digest, so a rebuilt tag
/// changes nothing until a commit moves the digest, and that commit
/// deploys the service (`should-deploy.sh` counts its Dockerfile and its
/// manifest, checked above). The base images of each Dockerfile, and no
/// `# syntax=` frontend image pulled by tag; the sidecars of each manifest,
/// as a repository and a digest (ECS's form). Dependabot moves the
/// Dockerfiles' digests, and CI checks that the sidecars' resolve, since
/// only ECS pulls them.
#[test]
fn the_images_a_deploy_runs_are_pinned_by_digest() {
    assert!(pinned_by_digest(&format!("rust:1.95@sha256:{}", "0a".repeat(32))));
    assert!(!pinned_by_digest("rust:1.95-bookworm"));
    assert!(!pinned_by_digest(&format!("rust@sha256:{}", "0A".repeat(32))));
    assert!(!pinned_by_digest("rust@sha256:0a0a"));

    let dependabot = yaml(".github/dependabot.yml");
    let docker_directories: Vec<String> = dependabot["updates"]
        .as_vec()
        .expect("updates")
        .iter()
        .filter(|update| update["package-ecosystem"].as_str() == Some("docker"))
        .flat_map(|update| strings(&update["directories"]))
        .collect();
    let images_job = read(".github/workflows/ci.yml");
    for service in SERVICES {
        let path = format!("services/{service}/Dockerfile");
        let dockerfile = read(&path);
        assert!(
            !dockerfile.lines().any(|line| line.starts_with("# syntax=")),
            "{path}: a `# syntax=` frontend is an image pulled by tag"
        );
        let mut stages = BTreeSet::new();
        let mut bases = 0;
        for line in dockerfile.lines().filter(|line| line.starts_with("FROM ")) {
            let words: Vec<&str> = line
                .split_whitespace()
                .skip(1)
                .filter(|word| !word.starts_with("--"))
                .collect();
            let image = words[0];
            if let [_, as_, stage] = words[..] {
                assert!(as_.eq_ignore_ascii_case("as"), "{path}: {line}");
                stages.insert(stage);
            }
            if stages.contains(image) {
                continue;
            }
            bases += 1;
            assert!(pinned_by_digest(image), "{path}: {image} is not pinned by digest");
        }
        assert_eq!(bases, 2, "{path}: a build image and a runtime image");
        assert!(
            docker_directories.contains(&format!("/services/{service}")),
            "Dependabot keeps {path}'s digests current: {docker_directories:?}"
        );

        let manifest = yaml(&format!("deploy/copilot/{service}/manifest.yml"));
        let sidecars = manifest["sidecars"].as_hash().expect("sidecars");
        assert!(!sidecars.is_empty());
        for (name, sidecar) in sidecars {
            let image = text(&sidecar["image"], "sidecar image");
            assert!(
                pinned_by_digest(image),
                "{service}'s sidecar {name:?}: {image} is not pinned by digest"
            );
        }
    }
    assert!(
        images_job.contains("deploy/copilot/${{ matrix.service }}/manifest.yml")
            && images_job.contains("docker buildx imagetools inspect"),
        "CI checks that the sidecars' digests resolve"
    );
}

/// Each service's deploys queue in groups of their own, one per
/// environment: GitHub keeps one running and one pending run per
/// concurrency group and cancels an older pending one, so a shared group
/// would let one service's deploy silently drop the other's.
#[test]
fn each_service_and_environment_deploys_in_a_concurrency_group_of_its_own() {
    let workflow = yaml(".github/workflows/deploy-service.yml");
    let jobs = workflow["jobs"].as_hash().expect("jobs");
    let mut groups = BTreeSet::new();
    for (name, job) in jobs {
        let name = text(name, "job name");
        let group = text(&job["concurrency"]["group"], "concurrency group");
        assert!(
            group.contains("${{ inputs.service }}") && group.contains(name),
            "job {name}: concurrency group `{group}` does not name both the service and the environment"
        );
        assert_eq!(
            job["concurrency"]["cancel-in-progress"],
            Yaml::Boolean(false),
            "job {name}"
        );
        groups.insert(group.to_owned());
    }
    assert_eq!(
        groups.len(),
        ENVIRONMENTS.len(),
        "one group per environment: {groups:?}"
    );
}

/// Runs `git` in `dir`, returning its standard output.
fn git(dir: &Path, args: &[&str]) -> String {
    let output = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "user.name=test", "-c", "user.email=test@example.invalid"])
        .args(args)
        .output()
        .expect("git runs");
    assert!(
        output.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

/// Writes `path` in the scratch repository `dir` and commits it; returns
/// the commit.
fn commit_file(dir: &Path, path: &str) -> String {
    let file = dir.join(path);
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    let previous = std::fs::read_to_string(&file).unwrap_or_default();
    std::fs::write(&file, format!("{previous}x\n")).unwrap();
    git(dir, &["add", "--all"]);
    git(dir, &["commit", "--quiet", "--message", path]);
    git(dir, &["rev-parse", "HEAD"])
}

/// `scripts/should-deploy.sh SERVICE DEPLOYED COMMIT`, run in the scratch
/// repository: its exit status (0 deploy, 1 skip, 2 error) and its reason.
fn should_deploy(dir: &Path, service: &str, deployed: &str, commit: &str) -> (i32, String) {
    let output = std::process::Command::new(dir.join("scripts/should-deploy.sh"))
        .args([service, deployed, commit])
        .output()
        .expect("should-deploy.sh runs");
    (
        output.status.code().expect("exited"),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A service deploys when anything that changes what is deployed changed
/// since the commit its environment last received (the service's code, the
/// shared code, the build's inputs and the deploy's own machinery), and
/// never otherwise: not when only the other service or the docs changed,
/// and not when the environment already runs a newer commit (a late run
/// must not put older code back). A deploy that was cancelled or failed
/// records nothing, so its changes count again at the next commit.
#[test]
fn a_service_deploys_what_changed_since_its_last_deploy_and_never_older_code() {
    let dir = std::env::temp_dir().join(format!("should-deploy-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("scripts")).unwrap();
    std::fs::copy(
        root().join("scripts/should-deploy.sh"),
        dir.join("scripts/should-deploy.sh"),
    )
    .unwrap();
    git(&dir, &["init", "--quiet"]);
    for service in SERVICES {
        commit_file(&dir, &format!("services/{service}/src/main.rs"));
    }
    let base = commit_file(&dir, "README.md");

    assert_eq!(should_deploy(&dir, "producer", "none", &base).0, 0, "nothing recorded");
    let (status, reason) = should_deploy(&dir, "producer", &base, &base);
    assert_eq!(status, 1, "already deployed: {reason}");

    for service in SERVICES {
        for path in [
            format!("services/{service}/Dockerfile"),
            "libs/kafka-service/src/lib.rs".to_owned(),
            "Cargo.lock".to_owned(),
            "Cargo.toml".to_owned(),
            ".dockerignore".to_owned(),
            format!("deploy/copilot/{service}/manifest.yml"),
            "deploy/copilot/.workspace".to_owned(),
            "deploy/keys/amazon-ecs.asc".to_owned(),
            "scripts/install-copilot.sh".to_owned(),
            "scripts/should-deploy.sh".to_owned(),
            ".github/workflows/deploy-service.yml".to_owned(),
        ] {
            let deployed = git(&dir, &["rev-parse", "HEAD"]);
            let commit = commit_file(&dir, &path);
            let (status, reason) = should_deploy(&dir, service, &deployed, &commit);
            assert_eq!(status, 0, "{service} after a change to {path}: {reason}");
            assert!(reason.contains(&path), "{reason}");
        }
    }

    let deployed = git(&dir, &["rev-parse", "HEAD"]);
    let consumer_only = commit_file(&dir, "services/consumer/src/feed.rs");
    let docs = commit_file(&dir, "docs/operations.md");
    let (status, reason) = should_deploy(&dir, "producer", &deployed, &docs);
    assert_eq!(status, 1, "only the consumer and docs changed: {reason}");
    // The consumer's deploy of `consumer_only` was cancelled, so the record
    // is still `deployed`: the next commit deploys its change.
    let (status, reason) = should_deploy(&dir, "consumer", &deployed, &docs);
    assert_eq!(status, 0, "{reason}");
    assert!(reason.contains("services/consumer/src/feed.rs"), "{reason}");
    // A newer change to the consumer is deployed; the run for the older
    // `consumer_only` ends late and must not put its older code back.
    let newer = commit_file(&dir, "services/consumer/src/feed.rs");
    let (status, reason) = should_deploy(&dir, "consumer", &newer, &consumer_only);
    assert_eq!(status, 1, "a newer commit is deployed: {reason}");
    assert!(reason.contains("already contains"), "{reason}");

    // A file moved out of the service still changes it.
    let deployed = git(&dir, &["rev-parse", "HEAD"]);
    git(&dir, &["mv", "services/producer/src/main.rs", "docs/main.rs"]);
    git(&dir, &["commit", "--quiet", "--message", "move"]);
    let moved = git(&dir, &["rev-parse", "HEAD"]);
    assert_eq!(should_deploy(&dir, "producer", &deployed, &moved).0, 0);

    assert_eq!(should_deploy(&dir, "producer", &base, &"0".repeat(40)).0, 2);
    assert_eq!(should_deploy(&dir, "no-such-service", &base, &moved).0, 2);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A scratch git repository holding what `scripts/deploy-record.sh` needs,
/// with a stand-in `aws` that keeps SSM parameters in files
/// (`aws ssm get-parameter --name N --query Parameter.Value --output text`
/// and `aws ssm put-parameter --name N --type String --overwrite --value V`).
struct DeployRecordSandbox {
    dir: PathBuf,
}

impl DeployRecordSandbox {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for script in [
            "scripts/should-deploy.sh",
            "scripts/deploy-record.sh",
            "deploy/copilot/.workspace",
        ] {
            std::fs::create_dir_all(dir.join(script).parent().unwrap()).unwrap();
            std::fs::copy(root().join(script), dir.join(script)).unwrap();
        }
        let bin = dir.join("bin");
        let parameters = dir.join("ssm");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::create_dir_all(&parameters).unwrap();
        std::fs::write(
            bin.join("aws"),
            format!(
                "#!/usr/bin/env bash\n\
                 store={}\n\
                 name=$(echo \"$4\" | tr / _)\n\
                 case $2 in\n\
                   get-parameter) [[ -f $store/$name ]] && cat \"$store/$name\" && exit 0;\n\
                     echo 'An error occurred (ParameterNotFound)' >&2; exit 254 ;;\n\
                   put-parameter) printf '%s' \"$9\" > \"$store/$name\" ;;\n\
                 esac\n",
                parameters.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(bin.join("aws"), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        git(&dir, &["init", "--quiet"]);
        Self { dir }
    }

    /// Runs `deploy-record.sh action` for `service` in `environment` at
    /// `commit`, with `extra` variables; returns what it wrote to
    /// `$GITHUB_OUTPUT`, and its stderr. Panics if it fails.
    fn run(
        &self,
        service: &str,
        action: &str,
        environment: &str,
        commit: &str,
        extra: &[(&str, &str)],
    ) -> (BTreeMap<String, String>, String) {
        let output_file = self.dir.join("output");
        std::fs::write(&output_file, "").unwrap();
        let output = std::process::Command::new(self.dir.join("scripts/deploy-record.sh"))
            .arg(action)
            .env(
                "PATH",
                format!("{}:{}", self.dir.join("bin").display(), std::env::var("PATH").unwrap()),
            )
            .env("SERVICE", service)
            .env("ENVIRONMENT", environment)
            .env("GITHUB_SHA", commit)
            .env("GITHUB_OUTPUT", &output_file)
            .env("RUNNER_TEMP", &self.dir)
            .envs(extra.iter().copied())
            .output()
            .unwrap();
        assert!(output.status.success(), "{service} {action} {environment}: {output:?}");
        let outputs = std::fs::read_to_string(&output_file)
            .unwrap()
            .lines()
            .filter_map(|line| line.split_once('='))
            .map(|(key, value)| (key.to_owned(), value.to_owned()))
            .collect();
        (outputs, String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

impl Drop for DeployRecordSandbox {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `deploy-record.sh`, with a stand-in `aws` keeping SSM parameters in
/// files: prod promotes what test last recorded, commit and image, in any
/// run, so a failed prod deploy is caught up by the next run even when
/// that run deploys nothing to test; prod already up to date, or a test
/// record without an image, promotes nothing.
#[test]
fn prod_promotes_what_test_last_recorded_in_any_later_run() {
    let sandbox = DeployRecordSandbox::new("deploy-record");
    let dir = &sandbox.dir;
    let first = commit_file(dir, "services/producer/src/main.rs");
    let run = |action: &str, environment: &str, commit: &str, extra: &[(&str, &str)]| {
        sandbox.run("producer", action, environment, commit, extra).0
    };
    let image = |n: u8| {
        format!(
            "123.dkr.ecr.eu-west-1.amazonaws.com/kafka-example/producer@sha256:{}",
            n.to_string().repeat(64)
        )
    };

    assert_eq!(
        run("promote", "prod", &first, &[])["deploy"],
        "false",
        "test has recorded nothing"
    );
    assert_eq!(run("plan", "test", &first, &[])["deploy"], "true");
    run("record", "test", &first, &[("IMAGE", &image(1))]);
    // What a run at `run_commit` promotes to prod: (commit, image).
    let promotes = |run_commit: &str| {
        let promote = run("promote", "prod", run_commit, &[]);
        assert_eq!(promote["deploy"], "true", "{promote:?}");
        (promote["commit"].clone(), promote["image"].clone())
    };
    assert_eq!(promotes(&first), (first.clone(), image(1)));
    // The prod deploy fails (or is not approved): nothing recorded. The
    // next commit changes only the docs, so test deploys nothing; prod
    // still catches up.
    let docs = commit_file(dir, "docs/operations.md");
    assert_eq!(run("plan", "test", &docs, &[])["deploy"], "false");
    assert_eq!(promotes(&docs), (first.clone(), image(1)));
    run(
        "record",
        "prod",
        &docs,
        &[("IMAGE", &image(1)), ("DEPLOYED_COMMIT", &first)],
    );
    assert_eq!(
        run("promote", "prod", &docs, &[])["deploy"],
        "false",
        "prod is up to date"
    );
    // A newer change reaches test, then prod.
    let second = commit_file(dir, "services/producer/src/main.rs");
    run("record", "test", &second, &[("IMAGE", &image(2))]);
    assert_eq!(promotes(&second), (second.clone(), image(2)));
}

/// A new event type cannot be dead-lettered because the producer deployed
/// first (issue 25, item 8): `deploy-record.sh` does not take the producer
/// to an environment whose consumer does not know every event type
/// (`docs/events/<type>.json`) of the producer's commit, in `plan` or in
/// `promote`, and takes it once the consumer has it; the deploy jobs wait
/// for that.
#[test]
fn a_new_event_type_reaches_the_consumer_before_the_producer() {
    let sandbox = DeployRecordSandbox::new("deploy-order");
    let dir = &sandbox.dir;
    for file in ["headers.json", "user.created.v1.json"] {
        std::fs::create_dir_all(dir.join("docs/events")).unwrap();
        std::fs::write(dir.join("docs/events").join(file), "{}").unwrap();
    }
    commit_file(dir, "services/consumer/src/main.rs");
    let known = commit_file(dir, "services/producer/src/main.rs");
    std::fs::write(dir.join("docs/events/user.deleted.v1.json"), "{}").unwrap();
    let new_type = commit_file(dir, "libs/events/src/lib.rs");

    let run = |service: &str, action: &str, environment: &str, commit: &str| -> (String, String) {
        let image = format!("registry/{service}@sha256:{}", "1".repeat(64));
        let (outputs, stderr) = sandbox.run(service, action, environment, commit, &[("IMAGE", &image)]);
        (outputs.get("deploy").cloned().unwrap_or_default(), stderr)
    };

    // Both services run `known` everywhere.
    for environment in ENVIRONMENTS {
        for service in SERVICES {
            run(service, "record", environment, &known);
        }
    }
    // `new_type` adds user.deleted.v1: the producer waits for the consumer.
    let (deploy, stderr) = run("producer", "plan", "test", &new_type);
    assert_eq!(deploy, "false", "{stderr}");
    assert!(stderr.contains("user.deleted.v1"), "names the type: {stderr}");
    assert_eq!(run("consumer", "plan", "test", &new_type).0, "true");
    run("consumer", "record", "test", &new_type);
    assert_eq!(
        run("producer", "plan", "test", &new_type).0,
        "true",
        "after the consumer"
    );
    run("producer", "record", "test", &new_type);

    // Prod: the producer's promotion waits for prod's consumer, too.
    let (deploy, stderr) = run("producer", "promote", "prod", &new_type);
    assert_eq!(deploy, "false", "{stderr}");
    assert!(stderr.contains("user.deleted.v1"), "names the type: {stderr}");
    assert_eq!(run("consumer", "promote", "prod", &new_type).0, "true");
    run("consumer", "record", "prod", &new_type);
    assert_eq!(
        run("producer", "promote", "prod", &new_type).0,
        "true",
        "after the consumer"
    );

    // The deploy jobs give the consumer's deploy time to land.
    let workflow = read(".github/workflows/deploy-service.yml");
    for action in ["plan", "promote"] {
        let step = workflow
            .split("- name: ")
            .find(|step| step.contains(&format!("scripts/deploy-record.sh {action}")))
            .unwrap_or_else(|| panic!("a step runs deploy-record.sh {action}"));
        assert!(
            step.contains("DEPLOY_ORDER_WAIT_SECS:"),
            "{action} waits for the consumer: {step}"
        );
    }
}

/// Nothing deploys that failed CI: the deploy workflow is called by CI
/// itself, in jobs that need every check, on main only, and by the manual
/// promote workflow, which only promotes (test's recorded image, which
/// passed CI) and only from main; no workflow deploys on a push of its
/// own. Production gets the image that test recorded, by digest, with the
/// deploy files of its commit, and never builds one.
#[test]
fn deploys_wait_for_ci_and_production_runs_the_image_test_ran() {
    let ci = yaml(".github/workflows/ci.yml");
    let checks: BTreeSet<String> = ci["jobs"]
        .as_hash()
        .expect("jobs")
        .iter()
        .filter(|(_, job)| job["uses"].is_badvalue())
        .map(|(name, _)| text(name, "job").to_owned())
        .collect();
    assert!(checks.contains("test") && checks.contains("lint"), "{checks:?}");
    let mut deployed = BTreeSet::new();
    for entry in std::fs::read_dir(root().join(".github/workflows")).unwrap() {
        let file = entry.unwrap().path();
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let workflow = yaml(&format!(".github/workflows/{name}"));
        for (job_name, job) in workflow["jobs"].as_hash().expect("jobs") {
            let job_name = text(job_name, "job");
            if job["uses"].as_str() != Some("./.github/workflows/deploy-service.yml") {
                continue;
            }
            if name == "promote.yml" {
                assert_eq!(job["with"]["promote-only"], Yaml::Boolean(true), "{name} only promotes");
                assert!(text(&job["if"], "if").contains("refs/heads/main"), "{name}: main only");
                assert!(
                    workflow["on"]["push"].is_badvalue() && !workflow["on"]["workflow_dispatch"].is_badvalue(),
                    "{name} runs by hand only"
                );
                continue;
            }
            assert_eq!(name, "ci.yml", "{name}: job {job_name} deploys outside CI");
            let needs: BTreeSet<String> = strings(&job["needs"]).into_iter().collect();
            assert_eq!(needs, checks, "job {job_name} must need every check");
            let condition = text(&job["if"], "if");
            assert!(
                condition.contains("refs/heads/main") && condition.contains("pull_request"),
                "job {job_name} deploys only main: {condition}"
            );
            deployed.insert(text(&job["with"]["service"], "service").to_owned());
        }
    }
    assert_eq!(
        deployed,
        SERVICES.iter().map(|s| s.to_string()).collect(),
        "CI deploys each service"
    );

    let deploy = yaml(".github/workflows/deploy-service.yml");
    assert!(
        deploy["on"]["push"].is_badvalue(),
        "deploy-service.yml runs only when called"
    );
    let test = &deploy["jobs"]["test"];
    let prod = &deploy["jobs"]["prod"];
    assert_eq!(text(&prod["needs"], "prod.needs"), "test");
    let step_env = |job: &Yaml, running: &str, name: &str| -> String {
        let step = job["steps"]
            .as_vec()
            .expect("steps")
            .iter()
            .find(|step| step["run"].as_str().is_some_and(|run| run.contains(running)))
            .unwrap_or_else(|| panic!("a step runs {running}"));
        text(&step["env"][name], name).to_owned()
    };
    // prod deploys the image test recorded, with the deploy files of the
    // commit it promotes, and records both; test records what it pushed.
    for (job, running, name, expected) in [
        (prod, "copilot svc deploy", "IMAGE", "${{ steps.plan.outputs.image }}"),
        (
            prod,
            "git restore --source",
            "COMMIT",
            "${{ steps.plan.outputs.commit }}",
        ),
        (
            prod,
            "deploy-record.sh record",
            "IMAGE",
            "${{ steps.plan.outputs.image }}",
        ),
        (
            prod,
            "deploy-record.sh record",
            "DEPLOYED_COMMIT",
            "${{ steps.plan.outputs.commit }}",
        ),
        (
            test,
            "deploy-record.sh record",
            "IMAGE",
            "${{ steps.image.outputs.image }}",
        ),
    ] {
        assert_eq!(
            step_env(job, running, name),
            expected,
            "the step that runs {running}: {name}"
        );
    }
    // A prod deploy that failed or was not approved is caught up by the
    // next run, which may deploy nothing to test.
    let condition = text(&prod["if"], "prod.if");
    assert!(
        condition.contains("!cancelled()") && !condition.contains("outputs"),
        "prod runs whether or not test deployed in this run: {condition}"
    );
    let runs = |job: &Yaml| -> Vec<String> {
        job["steps"]
            .as_vec()
            .expect("steps")
            .iter()
            .filter_map(|step| step["run"].as_str().map(str::to_owned))
            .collect()
    };
    let prod_runs = runs(prod).join("\n");
    let deploy_at = prod_runs.find("copilot svc deploy").expect("prod deploys");
    let pin_at = prod_runs
        .find("del(.image.build) | .image.location = strenv(IMAGE)")
        .expect("prod replaces the build with the tested image");
    assert!(pin_at < deploy_at, "the image is pinned before the deploy");
    assert!(prod_runs.contains("*@sha256:*"), "prod refuses anything but a digest");
    let test_runs = runs(test).join("\n");
    assert!(
        test_runs.contains("--tag \"$GITHUB_SHA\""),
        "test tags the image it builds"
    );
    assert!(
        test_runs.contains("imageTag=$GITHUB_SHA"),
        "and reads that image's digest"
    );
    for (name, job, plan) in [
        ("test", test, "deploy-record.sh plan"),
        ("prod", prod, "deploy-record.sh promote"),
    ] {
        let runs = runs(job);
        let plan = runs.iter().position(|run| run.contains(plan));
        let record = runs.iter().position(|run| run.contains("deploy-record.sh record"));
        let package = runs.iter().position(|run| run.contains("package-cloudformation.sh"));
        let deploy = runs.iter().position(|run| run.contains("copilot svc deploy"));
        let smoke = runs
            .iter()
            .position(|run| run.contains(&format!("scripts/smoke.sh \"$SERVICE\" {name}")));
        assert!(
            matches!((plan, package, record), (Some(p), Some(k), Some(r)) if p < k && k < r),
            "{name}: plans first, packages the deployed stack, records last: {runs:#?}"
        );
        assert!(
            matches!((deploy, smoke, record), (Some(d), Some(s), Some(r)) if d < s && s < r),
            "{name}: smoke-tests what it deployed before recording it: {runs:#?}"
        );
    }
}

/// Copilot's exit has a date and a plan (issue 25, item 9): the README's
/// "Leaving Copilot" gives the date, and names every dependency the
/// rendered service stacks still have on Copilot, each with its
/// replacement: the environment stack's exports they import (not our
/// addons'), Copilot's custom resources and the environment parameters
/// its controller sets, and the application's bucket.
#[test]
fn leaving_copilot_has_a_date_and_names_each_dependency() {
    let readme = read("deploy/README.md");
    let section = readme
        .split("## Leaving Copilot")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("deploy/README.md has a section \"Leaving Copilot\"");
    let date = section
        .split("leaves Copilot by **")
        .nth(1)
        .and_then(|rest| rest.split("**").next())
        .expect("the section says when the project leaves Copilot");
    chrono::NaiveDate::parse_from_str(date, "%Y-%m-%d").unwrap_or_else(|error| panic!("{date}: {error}"));

    let work = std::env::temp_dir().join(format!("render-copilot-exit-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    render_copilot(&work, &["-envs", "prod"]);
    let ours = environment_exports();
    let mut dependencies = BTreeSet::new();
    for service in SERVICES {
        let template = std::fs::read_to_string(work.join(format!("prod/{service}-prod.stack.yml"))).unwrap();
        let names_after = |marker: &str| -> Vec<String> {
            template
                .split(marker)
                .skip(1)
                .map(|rest| {
                    rest.chars()
                        .take_while(|c| c.is_ascii_alphanumeric())
                        .collect::<String>()
                })
                .filter(|name| !name.is_empty())
                .collect()
        };
        dependencies.extend(
            names_after("${AppName}-${EnvName}-")
                .into_iter()
                .filter(|name| !ours.contains(name)),
        );
        dependencies.extend(
            names_after("Type: Custom::")
                .into_iter()
                .map(|name| format!("Custom::{name}")),
        );
        for line in template
            .lines()
            .filter(|line| line.trim_start().starts_with("Parameters: ["))
        {
            let list = line.split('[').nth(1).unwrap().trim_end_matches(']');
            dependencies.extend(list.split(',').map(|name| name.trim().to_owned()));
        }
        for asset in ["S3Bucket", "AddonsTemplateURL"] {
            if template.contains(&format!("{asset}:")) {
                dependencies.insert(asset.to_owned());
            }
        }
    }
    std::fs::remove_dir_all(&work).unwrap();
    assert!(
        dependencies.contains("Custom::EnvControllerFunction"),
        "{dependencies:?}"
    );
    let unnamed: Vec<_> = dependencies
        .iter()
        .filter(|dependency| !section.contains(&format!("`{dependency}`")))
        .collect();
    assert!(
        unnamed.is_empty(),
        "\"Leaving Copilot\" names no replacement for {unnamed:?} (all: {dependencies:?})"
    );
}

/// Serves `answers` in turn on 127.0.0.1, one per connection (the last one
/// for good), as `status body` pairs; returns the base URL.
fn serve_answers(answers: Vec<(u16, &'static str)>) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for (index, stream) in listener.incoming().enumerate() {
            let Ok(mut stream) = stream else { return };
            let (status, body) = answers[index.min(answers.len() - 1)];
            let mut request = [0u8; 1024];
            let _ = std::io::Read::read(&mut stream, &mut request);
            let response = format!(
                "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = std::io::Write::write_all(&mut stream, response.as_bytes());
        }
    });
    format!("http://{address}")
}

fn smoke(service: &str, base_url: &str) -> std::process::Output {
    std::process::Command::new(root().join("scripts/smoke.sh"))
        .args([service, "test"])
        .env("SMOKE_BASE_URL", base_url)
        .env("SMOKE_INTERVAL_SECS", "0.1")
        .env("SMOKE_TIMEOUT_SECS", "3")
        .output()
        .expect("the script runs")
}

/// "Deployed" means working (issue 25, item 6): `scripts/smoke.sh` passes
/// only once the producer's readiness reports the broker reachable and
/// the consumer's reports it ready, waiting through the answers before,
/// and fails, naming the last answer, when that never comes.
#[test]
fn the_smoke_test_waits_for_a_reachable_broker_and_a_ready_consumer() {
    let producer = serve_answers(vec![
        (503, r#"{"error":"not_ready","message":"database"}"#),
        (200, r#"{"status":"ready","broker":"unknown"}"#),
        (200, r#"{"status":"ready","broker":"reachable"}"#),
    ]);
    let output = smoke("producer", &producer);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));

    let producer = serve_answers(vec![(200, r#"{"status":"ready","broker":"unreachable"}"#)]);
    let output = smoke("producer", &producer);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "a producer without its broker: {stderr}");
    assert!(
        stderr.contains(r#""broker":"unreachable""#),
        "names the last answer: {stderr}"
    );

    let consumer = serve_answers(vec![
        (503, r#"{"error":"not_ready","message":"no partition assigned"}"#),
        (
            200,
            r#"{"status":"ready","circuits":{"database":"closed","producer":"closed"}}"#,
        ),
    ]);
    let output = smoke("consumer", &consumer);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));

    let consumer = serve_answers(vec![(
        503,
        r#"{"error":"not_ready","message":"no partition assigned"}"#,
    )]);
    let output = smoke("consumer", &consumer);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "a consumer without partitions: {stderr}");
    assert!(
        stderr.contains("no partition assigned"),
        "names the last answer: {stderr}"
    );
}

/// The CloudFormation of each deploy is written out and must pass cfn-lint:
/// `package-cloudformation.sh` fails on a template cfn-lint rejects. The
/// addons (ours) fail on any finding; Copilot's stack only on findings
/// `deploy/cfn-lint-copilot.yml` does not name. A stand-in `copilot` writes
/// the templates (the real one needs AWS).
#[test]
fn the_packaged_cloudformation_must_pass_cfn_lint() {
    let validators = root().join(".run/validators/bin");
    assert!(
        validators.join("cfn-lint").exists(),
        "cfn-lint is installed by scripts/validate.sh (scripts/test.sh runs it first)"
    );
    let work = std::env::temp_dir().join(format!("package-cfn-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    let bin = work.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let copilot = bin.join("copilot");
    // Writes $STACK and $ADDONS as `copilot svc package --output-dir` names
    // them: <service>-<env>.stack.yml and <service>.addons.stack.yml.
    std::fs::write(
        &copilot,
        "#!/bin/sh\nwhile [ $# -gt 0 ]; do\n  case $1 in\n    --name) name=$2; shift ;;\n    --env) env=$2; shift ;;\n    --output-dir) dir=$2; shift ;;\n  esac\n  shift\ndone\nprintf '%s\\n' \"$STACK\" > \"$dir/$name-$env.stack.yml\"\nprintf '%s\\n' \"$ADDONS\" > \"$dir/$name.addons.stack.yml\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&copilot, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let package = |stack: &str, addons: &str| {
        let _ = std::fs::remove_dir_all(work.join("out"));
        std::process::Command::new(root().join("scripts/package-cloudformation.sh"))
            .args(["producer", "prod"])
            .arg(work.join("out"))
            .env(
                "PATH",
                format!(
                    "{}:{}:{}",
                    bin.display(),
                    validators.display(),
                    std::env::var("PATH").unwrap()
                ),
            )
            .env("STACK", stack)
            .env("ADDONS", addons)
            .output()
            .expect("the script runs")
    };
    let valid = "Resources:\n  Topic:\n    Type: AWS::SNS::Topic\n";
    // W2001, a finding the Copilot configuration names (Copilot declares
    // parameters its manifest may not use).
    let unused_parameter =
        "Parameters:\n  RulePath:\n    Type: String\nResources:\n  Topic:\n    Type: AWS::SNS::Topic\n";
    let output = package(unused_parameter, valid);
    assert!(
        output.status.success(),
        "valid templates, and a finding Copilot's stack may have: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(work.join("out/prod/producer-prod.stack.yml").exists());
    assert!(work.join("out/prod/producer.addons.stack.yml").exists());

    let output = package(valid, unused_parameter);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        !output.status.success(),
        "the addons are ours, and pass with no finding: {stdout}"
    );
    assert!(stdout.contains("W2001"), "cfn-lint names the finding: {stdout}");

    let output = package("Resources:\n  Topic:\n    Type: AWS::SNS::NoSuchThing\n", valid);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(!output.status.success(), "cfn-lint passed a bad stack: {stdout}");
    assert!(stdout.contains("NoSuchThing"), "cfn-lint names the problem: {stdout}");
    std::fs::remove_dir_all(&work).unwrap();
}

/// Runs `scripts/render-copilot.sh` into `dir` with `flags`.
fn render_copilot(dir: &Path, flags: &[&str]) {
    let output = std::process::Command::new(root().join("scripts/render-copilot.sh"))
        .arg(dir)
        .args(flags)
        .output()
        .expect("the script runs");
    assert!(
        output.status.success(),
        "render-copilot.sh {flags:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Runs cfn-lint, with the Copilot configuration, as if today were `day`
/// (`scripts/lib/cfn_lint_on.py`) on every template Copilot renders in
/// `dir`. Returns whether it passed, and what it printed.
fn lint_copilot_templates_on(day: &str, dir: &Path) -> (bool, String) {
    let mut templates = Vec::new();
    for environment in ENVIRONMENTS {
        templates.push(dir.join(format!("{environment}/{environment}.env.yml")));
        for service in SERVICES {
            templates.push(dir.join(format!("{environment}/{service}-{environment}.stack.yml")));
        }
    }
    let output = std::process::Command::new(root().join(".run/validators/bin/python"))
        .arg(root().join("scripts/lib/cfn_lint_on.py"))
        .arg(day)
        .arg("--config-file")
        .arg(root().join("deploy/cfn-lint-copilot.yml"))
        .args(["--format", "parseable", "--"])
        .args(&templates)
        .output()
        .expect("cfn-lint runs (scripts/validate.sh installs it)");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

/// Copilot v1.34.1 creates its custom-resource Lambda functions on
/// `nodejs20.x`, which Lambda stops creating on 2027-02-01 and updating on
/// 2027-03-03; from then cfn-lint's E2531 and E2533 fail every deploy's
/// lint, and CloudFormation every update. The overrides move them to a
/// supported runtime. Checked on the templates Copilot's own code renders
/// (`scripts/render-copilot.sh`), linted as if it were the day after
/// `nodejs20.x`'s last (the dates are cfn-lint's): with the overrides they
/// pass, and without them they fail on exactly those checks.
#[test]
fn copilots_functions_still_deploy_after_nodejs20_reaches_end_of_life() {
    // In the validators' virtualenv, under lib/python3.N/.
    let lifecycle = std::fs::read_dir(root().join(".run/validators/lib"))
        .expect("scripts/validate.sh installs cfn-lint")
        .map(|entry| {
            entry
                .unwrap()
                .path()
                .join("site-packages/cfnlint/data/AdditionalSpecs/LmbdRuntimeLifecycle.json")
        })
        .find(|path| path.exists())
        .expect("cfn-lint's runtime lifecycle data");
    let lifecycle: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&lifecycle).unwrap_or_else(|error| panic!("{}: {error}", lifecycle.display())),
    )
    .unwrap();
    let update_block = lifecycle["nodejs20.x"]["update-block"]
        .as_str()
        .expect("nodejs20.x's dates");
    let after = chrono::NaiveDate::parse_from_str(update_block, "%Y-%m-%d").unwrap() + chrono::Days::new(1);
    let after = after.to_string();

    let work = std::env::temp_dir().join(format!("render-copilot-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    render_copilot(&work.join("overridden"), &[]);
    render_copilot(&work.join("as-copilot-writes-them"), &["-overrides=false"]);

    let (passed, findings) = lint_copilot_templates_on(&after, &work.join("overridden"));
    assert!(passed, "with the overrides, on {after}: {findings}");

    let (passed, findings) = lint_copilot_templates_on(&after, &work.join("as-copilot-writes-them"));
    assert!(!passed, "without the overrides, on {after}, the lint should fail");
    let checks: BTreeSet<&str> = findings.lines().filter_map(|line| line.split(':').nth(5)).collect();
    assert_eq!(checks, BTreeSet::from(["E2533"]), "{findings}");
    // Three functions in each environment stack and each service stack.
    assert_eq!(
        findings.matches("nodejs20.x").count(),
        3 * 3 * ENVIRONMENTS.len(),
        "{findings}"
    );
    std::fs::remove_dir_all(&work).unwrap();
}

/// Production traffic is HTTPS only: the consumer's Network Load Balancer
/// terminates TLS, the producer's Application Load Balancer keeps
/// Copilot's HTTP-to-HTTPS redirect, and the documented first deployment
/// gives the application the domain both certificates come from.
#[test]
fn the_load_balancers_serve_https_from_the_applications_domain() {
    let consumer = yaml("deploy/copilot/consumer/manifest.yml");
    let port = text(&consumer["nlb"]["port"], "nlb.port");
    assert!(port.ends_with("/tls"), "the consumer's NLB listens on {port}");
    for service in SERVICES {
        let manifest = yaml(&format!("deploy/copilot/{service}/manifest.yml"));
        assert_ne!(
            manifest["http"]["redirect_to_https"],
            Yaml::Boolean(false),
            "{service} turns off the redirect to HTTPS"
        );
    }
    let readme = read("deploy/README.md");
    let init = readme
        .lines()
        .find(|line| line.starts_with("copilot app init"))
        .expect("deploy/README.md shows `copilot app init`");
    assert!(init.contains("--domain"), "{init}");
}

/// The Docker build context leaves out build output, fuzzing state and
/// test caches wherever they are (a pattern without `**/` matches only at
/// the context root), and CI cancels superseded runs of a pull request but
/// never an earlier commit's run on `main`, running or pending.
#[test]
fn the_build_context_and_ci_cancel_only_what_they_should() {
    let ignored: BTreeSet<String> = read(".dockerignore")
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(str::to_owned)
        .collect();
    for needed in ["**/target/", "fuzz/", "**/.schemathesis/", ".run/", ".git/"] {
        assert!(ignored.contains(needed), ".dockerignore lacks `{needed}`: {ignored:?}");
    }
    let ci = yaml(".github/workflows/ci.yml");
    let group = text(&ci["concurrency"]["group"], "concurrency group");
    assert!(
        group.contains("github.sha"),
        "main commits share the group `{group}`, so GitHub cancels their pending runs"
    );
    let cancel = &ci["concurrency"]["cancel-in-progress"];
    assert_ne!(
        cancel,
        &Yaml::Boolean(true),
        "CI would cancel runs of earlier main commits"
    );
    assert!(
        text(cancel, "cancel-in-progress").contains("pull_request"),
        "cancel only superseded pull-request runs: {cancel:?}"
    );
    let runs: Vec<String> = ci["jobs"]
        .as_hash()
        .expect("jobs")
        .iter()
        .filter(|(name, _)| text(name, "job") != "test")
        .flat_map(|(_, job)| strings(job))
        .collect();
    assert!(
        runs.iter().all(|run| !run.contains("cargo deny")),
        "cargo deny runs in scripts/test.sh (job `test`) already"
    );
}

/// The Copilot installer keeps a binary only when its detached signature
/// verifies against deploy/keys/amazon-ecs.asc, whose fingerprint is the
/// one the script pins. A download signed by another key, or with a
/// signature that is not one, installs nothing. (A real release cannot be
/// downloaded here; the releases are served from a directory.)
#[test]
fn the_copilot_installer_refuses_a_binary_its_pinned_key_did_not_sign() {
    let script = read("scripts/install-copilot.sh");
    let pinned = script
        .lines()
        .find_map(|line| line.strip_prefix("fingerprint="))
        .expect("install-copilot.sh pins a fingerprint");
    let work = std::env::temp_dir().join(format!("copilot-install-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    let gpg = |home: &Path, args: &[&str]| {
        let output = std::process::Command::new("gpg")
            .arg("--homedir")
            .arg(home)
            .args(["--batch", "--quiet"])
            .args(args)
            .output()
            .expect("gpg runs");
        assert!(
            output.status.success(),
            "gpg {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    };
    let keys = work.join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    std::fs::set_permissions(&keys, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let key = root().join("deploy/keys/amazon-ecs.asc");
    gpg(&keys, &["--import", key.to_str().unwrap()]);
    let fingerprints = gpg(&keys, &["--with-colons", "--fingerprint"]);
    assert!(
        fingerprints.contains(&format!("fpr:::::::::{pinned}:")),
        "deploy/keys/amazon-ecs.asc is the pinned key {pinned}: {fingerprints}"
    );

    // A release signed by a key of our own.
    let asset = if cfg!(target_arch = "aarch64") {
        "copilot-linux-arm64"
    } else {
        "copilot-linux"
    };
    let release = work.join("releases/v9.9.9");
    std::fs::create_dir_all(&release).unwrap();
    let binary = release.join(asset);
    std::fs::write(&binary, "#!/bin/sh\necho 'copilot version: v9.9.9'\n").unwrap();
    gpg(
        &keys,
        &[
            "--passphrase",
            "",
            "--quick-gen-key",
            "Not Amazon <not@example.invalid>",
            "rsa2048",
            "sign",
            "never",
        ],
    );
    gpg(
        &keys,
        &[
            "--local-user",
            "not@example.invalid",
            "--armor",
            "--detach-sign",
            binary.to_str().unwrap(),
        ],
    );
    let install = |dir: &Path| {
        std::process::Command::new(root().join("scripts/install-copilot.sh"))
            .args(["v9.9.9", dir.to_str().unwrap()])
            .env(
                "COPILOT_RELEASES",
                format!("file://{}", work.join("releases").display()),
            )
            .output()
            .expect("the installer runs")
    };
    let dir = work.join("bin");
    let output = install(&dir);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "installed a binary another key signed: {stderr}"
    );
    assert!(stderr.contains("no valid signature"), "{stderr}");
    assert!(!dir.join("copilot").exists(), "nothing is installed");

    // A signature file that is not a signature.
    std::fs::write(release.join(format!("{asset}.asc")), "not a signature").unwrap();
    let output = install(&dir);
    assert!(!output.status.success());
    assert!(!dir.join("copilot").exists());
    std::fs::remove_dir_all(&work).unwrap();
}
