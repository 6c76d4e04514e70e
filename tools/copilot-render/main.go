// Command copilot-render writes the CloudFormation that AWS Copilot deploys
// for this project's environments and services, without AWS: Copilot's own
// template code (the copilot-cli module this file is built inside, at the
// version scripts/render-copilot.sh pins) renders deploy/copilot's
// manifests, addons and overrides (cfn.patches.yml) as `copilot env
// deploy` and `copilot svc deploy` would.
//
// What needs AWS is stood in for with fixed values: the account
// (123456789012), the region (us-east-1), the application's domain
// (example.com), the artifact bucket where the custom resources' code and
// the addons templates are uploaded, and the pushed image. Nothing else is
// changed, so the templates are the deployed ones up to those values.
//
//	copilot-render -workspace DEPLOY_DIR -out DIR [-envs test,prod] [-services producer,consumer] [-overrides=false]
//
// For each environment E it writes DIR/E/E.env.yml, and for each service S
// DIR/E/S-E.stack.yml and DIR/E/S.addons.stack.yml, the names `copilot
// env package` and `copilot svc package` use.
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/aws/copilot-cli/internal/pkg/addon"
	"github.com/aws/copilot-cli/internal/pkg/config"
	"github.com/aws/copilot-cli/internal/pkg/deploy"
	"github.com/aws/copilot-cli/internal/pkg/deploy/cloudformation/stack"
	"github.com/aws/copilot-cli/internal/pkg/manifest"
	"github.com/aws/copilot-cli/internal/pkg/override"
	"github.com/aws/copilot-cli/internal/pkg/version"
	"github.com/aws/copilot-cli/internal/pkg/workspace"
	"github.com/spf13/afero"
)

const (
	account = "123456789012"
	region  = "us-east-1"
	domain  = "example.com"
	bucket  = "stackset-artifacts-bucket"
	kmsKey  = "arn:aws:kms:us-east-1:123456789012:key/00000000-0000-0000-0000-000000000000"
	root    = "arn:aws:iam::123456789012:root"
)

func main() {
	dir := flag.String("workspace", "", "the directory that holds copilot/ (deploy/)")
	out := flag.String("out", "", "where the templates are written")
	envs := flag.String("envs", "test,prod", "environments, comma-separated")
	services := flag.String("services", "producer,consumer", "services, comma-separated")
	overrides := flag.Bool("overrides", true, "apply the overrides (cfn.patches.yml); false renders Copilot's templates as they are")
	flag.Parse()
	if *dir == "" || *out == "" {
		fmt.Fprintln(os.Stderr, "usage: copilot-render -workspace DEPLOY_DIR -out DIR [-envs test,prod] [-services producer,consumer] [-overrides=false]")
		os.Exit(2)
	}
	if err := run(*dir, *out, strings.Split(*envs, ","), strings.Split(*services, ","), *overrides); err != nil {
		fmt.Fprintf(os.Stderr, "copilot-render: %v\n", err)
		os.Exit(1)
	}
}

func run(dir, out string, envs, services []string, overrides bool) error {
	out, err := filepath.Abs(out)
	if err != nil {
		return err
	}
	// Copilot finds the workspace from the working directory, as the CLI does.
	if err := os.Chdir(dir); err != nil {
		return err
	}
	ws, err := workspace.Use(afero.NewOsFs())
	if err != nil {
		return fmt.Errorf("workspace: %w", err)
	}
	summary, err := ws.Summary()
	if err != nil {
		return err
	}
	app := &config.Application{Name: summary.Application, Domain: domain}
	// Where overrides are looked up: an empty file system has none.
	overridesFS := afero.NewOsFs()
	if !overrides {
		overridesFS = afero.NewMemMapFs()
	}
	for _, env := range envs {
		if err := os.MkdirAll(filepath.Join(out, env), 0o755); err != nil {
			return err
		}
		envManifest, err := renderEnvironment(ws, overridesFS, app, env, out)
		if err != nil {
			return fmt.Errorf("environment %s: %w", env, err)
		}
		for _, svc := range services {
			if err := renderService(ws, overridesFS, app, envManifest, env, svc, out); err != nil {
				return fmt.Errorf("service %s in %s: %w", svc, env, err)
			}
		}
	}
	return nil
}

func renderEnvironment(ws *workspace.Workspace, overridesFS afero.Fs, app *config.Application, env, out string) (*manifest.Environment, error) {
	raw, err := ws.ReadEnvironmentManifest(env)
	if err != nil {
		return nil, err
	}
	interpolated, err := manifest.NewInterpolator(app.Name, env).Interpolate(string(raw))
	if err != nil {
		return nil, err
	}
	mft, err := manifest.UnmarshalEnvironment([]byte(interpolated))
	if err != nil {
		return nil, err
	}
	if err := mft.Validate(); err != nil {
		return nil, fmt.Errorf("manifest: %w", err)
	}
	var addons *stack.Addons
	parsed, err := addon.ParseFromEnv(ws)
	if err == nil {
		addons = &stack.Addons{S3ObjectURL: assetURL("environment-addons.yml"), Stack: parsed}
	} else if !errors.As(err, new(*addon.ErrAddonsNotFound)) {
		return nil, fmt.Errorf("addons: %w", err)
	}
	conf, err := stack.NewEnvStackConfig(&stack.EnvConfig{
		Name:                 env,
		Version:              version.LatestTemplateVersion(),
		App:                  deploy.AppInformation{Name: app.Name, Domain: app.Domain, AccountPrincipalARN: root},
		Addons:               addons,
		ArtifactBucketARN:    "arn:aws:s3:::" + bucket,
		ArtifactBucketKeyARN: kmsKey,
		Mft:                  mft,
		RawMft:               interpolated,
	})
	if err != nil {
		return nil, err
	}
	tpl, err := conf.Template()
	if err != nil {
		return nil, err
	}
	tpl, err = applyOverrides(overridesFS, ws.EnvOverridesPath(), tpl)
	if err != nil {
		return nil, err
	}
	return mft, write(filepath.Join(out, env, env+".env.yml"), tpl)
}

func renderService(ws *workspace.Workspace, overridesFS afero.Fs, app *config.Application, envManifest *manifest.Environment, env, svc, out string) error {
	raw, err := ws.ReadWorkloadManifest(svc)
	if err != nil {
		return err
	}
	interpolated, err := manifest.NewInterpolator(app.Name, env).Interpolate(string(raw))
	if err != nil {
		return err
	}
	workload, err := manifest.UnmarshalWorkload([]byte(interpolated))
	if err != nil {
		return err
	}
	applied, err := workload.ApplyEnv(env)
	if err != nil {
		return err
	}
	if err := applied.Validate(); err != nil {
		return fmt.Errorf("manifest: %w", err)
	}
	lbws, ok := applied.Manifest().(*manifest.LoadBalancedWebService)
	if !ok {
		return fmt.Errorf("a %T; this renderer knows Load Balanced Web Services only", applied.Manifest())
	}
	var addons stack.NestedStackConfigurer
	parsed, err := addon.ParseFromWorkload(svc, ws)
	if err == nil {
		addons = parsed
		tpl, err := parsed.Template()
		if err != nil {
			return fmt.Errorf("addons: %w", err)
		}
		if err := write(filepath.Join(out, env, svc+".addons.stack.yml"), tpl); err != nil {
			return err
		}
	} else if !errors.As(err, new(*addon.ErrAddonsNotFound)) {
		return fmt.Errorf("addons: %w", err)
	}
	conf, err := stack.NewLoadBalancedWebService(stack.LoadBalancedWebServiceConfig{
		App:                app,
		EnvManifest:        envManifest,
		Manifest:           lbws,
		RawManifest:        interpolated,
		ArtifactBucketName: bucket,
		ArtifactKey:        kmsKey,
		RootUserARN:        root,
		Addons:             addons,
		RuntimeConfig: stack.RuntimeConfig{
			PushedImages: map[string]stack.ECRImage{
				svc: {
					RepoURL:           fmt.Sprintf("%s.dkr.ecr.%s.amazonaws.com/%s/%s", account, region, app.Name, svc),
					ImageTag:          "render",
					Digest:            "sha256:" + strings.Repeat("0", 64),
					MainContainerName: svc,
					ContainerName:     svc,
				},
			},
			AddonsTemplateURL:        assetURL(svc + ".addons.stack.yml"),
			ServiceDiscoveryEndpoint: fmt.Sprintf("%s.%s.local", env, app.Name),
			AccountID:                account,
			Region:                   region,
			EnvVersion:               version.LatestTemplateVersion(),
			Version:                  version.LatestTemplateVersion(),
		},
	})
	if err != nil {
		return err
	}
	tpl, err := conf.Template()
	if err != nil {
		return err
	}
	tpl, err = applyOverrides(overridesFS, ws.WorkloadOverridesPath(svc), tpl)
	if err != nil {
		return err
	}
	return write(filepath.Join(out, env, fmt.Sprintf("%s-%s.stack.yml", svc, env)), tpl)
}

// applyOverrides applies a cfn.patches.yml in dir, as Copilot does after
// rendering; a patch on a path the template lacks is an error there too.
func applyOverrides(fs afero.Fs, dir, tpl string) (string, error) {
	info, err := override.Lookup(dir, fs)
	if err != nil {
		if errors.As(err, new(*override.ErrNotExist)) {
			return tpl, nil
		}
		return "", err
	}
	if !info.IsYAMLPatch() {
		return "", fmt.Errorf("%s: only YAML patch overrides are rendered", dir)
	}
	patched, err := override.WithPatch(info.Path(), override.PatchOpts{FS: fs}).Override([]byte(tpl))
	if err != nil {
		return "", fmt.Errorf("apply %s: %w", info.Path(), err)
	}
	return string(patched), nil
}

func assetURL(key string) string {
	return fmt.Sprintf("https://%s.s3.%s.amazonaws.com/manual/%s", bucket, region, key)
}

func write(path, content string) error {
	return os.WriteFile(path, []byte(content), 0o644)
}
