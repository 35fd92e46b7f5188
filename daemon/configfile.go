package daemon

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/gohcl"
	"github.com/hashicorp/hcl/v2/hclparse"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	"github.com/peerd/peerd/apps"
)

// fileConfig is the HCL form of Config. Pointers tell "absent" from "zero",
// so that only the keys a file sets override the defaults. Every agent flag
// has a key here named like the flag with '-' turned into '_'.
type fileConfig struct {
	Node                 *string           `hcl:"node,optional"`
	Bind                 *string           `hcl:"bind,optional"`
	Advertise            *string           `hcl:"advertise,optional"`
	Join                 []string          `hcl:"join,optional"`
	RetryJoin            []string          `hcl:"retry_join,optional"`
	RetryJoinInterval    *string           `hcl:"retry_join_interval,optional"`
	RetryJoinMaxInterval *string           `hcl:"retry_join_max_interval,optional"`
	DataDir              *string           `hcl:"data_dir,optional"`
	Encrypt              *string           `hcl:"encrypt,optional"`
	KeyringFile          *string           `hcl:"keyring_file,optional"`
	InsecureGossip       *bool             `hcl:"insecure_gossip,optional"`
	Tags                 map[string]string `hcl:"tags,optional"`
	HTTPAddr             *string           `hcl:"http_addr,optional"`
	Socket               *string           `hcl:"socket,optional"`
	LogLevel             *string           `hcl:"log_level,optional"`
	LogJSON              *bool             `hcl:"log_json,optional"`
	GossipProfile        *string           `hcl:"gossip_profile,optional"`
	TrustKey             []string          `hcl:"trust_key,optional"`
	AllowUnsigned        *bool             `hcl:"allow_unsigned,optional"`
	AllowOutage          *bool             `hcl:"allow_outage,optional"`
	Restart              *string           `hcl:"restart,optional"`
	HealthCmd            *string           `hcl:"health_cmd,optional"`
	HealthURL            *string           `hcl:"health_url,optional"`
	Apps                 []fileApp         `hcl:"app,block"`
}

// fileApp is an `app "NAME" { ... }` block: a managed application.
type fileApp struct {
	Name string `hcl:"name,label"`
	// Command is the executable and its arguments; a newer version in the
	// app's version store replaces the executable.
	Command     []string          `hcl:"command,optional"`
	Version     *string           `hcl:"version,optional"`
	Env         map[string]string `hcl:"env,optional"`
	Address     *string           `hcl:"address,optional"`
	Listen      []string          `hcl:"listen,optional"`
	StopTimeout *string           `hcl:"stop_timeout,optional"`
	Health      *struct {
		HTTP     *string  `hcl:"http,optional"`
		Cmd      []string `hcl:"cmd,optional"`
		Interval *string  `hcl:"interval,optional"`
	} `hcl:"health,block"`
	Peers *struct {
		Env    *string `hcl:"env,optional"`
		File   *string `hcl:"file,optional"`
		Signal *string `hcl:"signal,optional"`
	} `hcl:"peers,block"`
}

// appConfig turns a block into an apps.Config.
func (f fileApp) appConfig(pos string) (apps.Config, error) {
	deref := func(p *string) string {
		if p == nil {
			return ""
		}
		return *p
	}
	c := apps.Config{Name: f.Name, Version: deref(f.Version), Env: f.Env, Address: deref(f.Address), Listen: f.Listen}
	if len(f.Command) > 0 {
		c.Binary, c.Args = f.Command[0], f.Command[1:]
	}
	var errs []error
	dur := func(key string, p *string, dst *time.Duration) {
		if p == nil {
			return
		}
		d, err := time.ParseDuration(*p)
		if err != nil {
			errs = append(errs, fmt.Errorf("config file %s: app %q: %s = %q is not a duration (e.g. \"5s\")", pos, f.Name, key, *p))
		}
		*dst = d
	}
	dur("stop_timeout", f.StopTimeout, &c.StopTimeout)
	if h := f.Health; h != nil {
		c.Health = apps.HealthConfig{HTTP: deref(h.HTTP), Cmd: h.Cmd}
		dur("interval", h.Interval, &c.HealthInterval)
	}
	if p := f.Peers; p != nil {
		c.Peers = apps.PeersConfig{Env: deref(p.Env), File: deref(p.File), Signal: deref(p.Signal)}
	}
	return c, errors.Join(errs...)
}

// ConfigDirFiles lists the config files of a --config-dir in the order
// they apply: its *.hcl and *.json files (HCL's JSON form), by name, as
// Consul and Nomad read theirs; anything else in it is ignored.
func ConfigDirFiles(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("read config dir: %w", err)
	}
	var files []string
	for _, e := range entries {
		if e.Type().IsRegular() || e.Type()&os.ModeSymlink != 0 {
			if ext := filepath.Ext(e.Name()); ext == ".hcl" || ext == ".json" {
				files = append(files, filepath.Join(dir, e.Name()))
			}
		}
	}
	sort.Strings(files)
	return files, nil
}

// LoadPaths applies config files in order on top of cfg: each path a file,
// or a directory whose files ConfigDirFiles lists.
func LoadPaths(cfg *Config, paths ...string) error {
	for _, p := range paths {
		files := []string{p}
		if fi, err := os.Stat(p); err == nil && fi.IsDir() {
			if files, err = ConfigDirFiles(p); err != nil {
				return err
			}
		}
		for _, file := range files {
			if err := LoadFile(file, cfg); err != nil {
				return err
			}
		}
	}
	return nil
}

// LoadFile applies the keys set in the config file at path on top of cfg:
// HCL, or HCL's JSON form for a name ending in .json. A key a later file
// sets again wins; app blocks add up (one declared twice is an error of
// Validate). Errors name the file and line, and for an unknown key the
// nearest valid one.
func LoadFile(path string, cfg *Config) error {
	src, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("read config file: %w", err)
	}
	parse := hclparse.NewParser().ParseHCL
	if strings.HasSuffix(path, ".json") {
		parse = hclparse.NewParser().ParseJSON
	}
	file, diags := parse(src, path)
	if diags.HasErrors() {
		return fmt.Errorf("config file %w", diagsError(diags, src))
	}
	var fc fileConfig
	if diags := gohcl.DecodeBody(file.Body, nil, &fc); diags.HasErrors() {
		return fmt.Errorf("config file %w", diagsError(diags, src))
	}

	setString := func(dst *string, v *string) {
		if v != nil {
			*dst = *v
		}
	}
	setString(&cfg.Node, fc.Node)
	setString(&cfg.Bind, fc.Bind)
	setString(&cfg.Advertise, fc.Advertise)
	setString(&cfg.DataDir, fc.DataDir)
	setString(&cfg.Encrypt, fc.Encrypt)
	setString(&cfg.KeyringFile, fc.KeyringFile)
	setString(&cfg.HTTPAddr, fc.HTTPAddr)
	setString(&cfg.Socket, fc.Socket)
	setString(&cfg.LogLevel, fc.LogLevel)
	setString(&cfg.GossipProfile, fc.GossipProfile)
	setString(&cfg.Restart, fc.Restart)
	setString(&cfg.HealthCmd, fc.HealthCmd)
	setString(&cfg.HealthURL, fc.HealthURL)
	if fc.TrustKey != nil {
		cfg.TrustKeys = fc.TrustKey
	}
	if fc.AllowUnsigned != nil {
		cfg.AllowUnsigned = *fc.AllowUnsigned
	}
	if fc.InsecureGossip != nil {
		cfg.InsecureGossip = *fc.InsecureGossip
	}
	if fc.AllowOutage != nil {
		cfg.AllowOutage = *fc.AllowOutage
	}
	if fc.Join != nil {
		cfg.Join = fc.Join
	}
	if fc.RetryJoin != nil {
		cfg.RetryJoin = fc.RetryJoin
	}
	if fc.Tags != nil {
		cfg.Tags = fc.Tags
	}
	if fc.LogJSON != nil {
		cfg.LogJSON = *fc.LogJSON
	}
	for _, d := range []struct {
		key string
		v   *string
		dst *time.Duration
	}{
		{"retry_join_interval", fc.RetryJoinInterval, &cfg.RetryJoinInterval},
		{"retry_join_max_interval", fc.RetryJoinMaxInterval, &cfg.RetryJoinMaxInterval},
	} {
		if d.v == nil {
			continue
		}
		v, err := time.ParseDuration(*d.v)
		if err != nil {
			return fmt.Errorf("config file %s: %s = %q is not a duration (e.g. \"5s\")", attrPos(file, path, d.key), d.key, *d.v)
		}
		*d.dst = v
	}
	if fc.Apps != nil {
		for _, fa := range fc.Apps {
			pos := path
			if body, ok := file.Body.(*hclsyntax.Body); ok {
				for _, b := range body.Blocks {
					if b.Type == "app" && len(b.Labels) == 1 && b.Labels[0] == fa.Name {
						pos = fmt.Sprintf("%s:%d", path, b.TypeRange.Start.Line)
					}
				}
			}
			ac, err := fa.appConfig(pos)
			if err != nil {
				return err
			}
			cfg.Apps = append(cfg.Apps, ac)
		}
	}
	cfg.ConfigFiles = append(cfg.ConfigFiles, path)
	return nil
}

// diagsError reports every error in diags (hcl's Error shows only the first).
// hcl suggests a key only when the unknown one is within two edits of it;
// here a flag's or variable's spelling (retry-join-max-interval, DATA_DIR)
// finds its key too, and a key nothing resembles gets the list of valid ones.
func diagsError(diags hcl.Diagnostics, src []byte) error {
	schema, _ := gohcl.ImpliedBodySchema(&fileConfig{})
	var keys []string
	for _, a := range schema.Attributes {
		keys = append(keys, a.Name)
	}
	var errs []error
	for _, d := range diags {
		if d.Severity != hcl.DiagError {
			continue
		}
		if (d.Summary == "Unsupported argument" || d.Summary == "Unsupported block type") &&
			!strings.Contains(d.Detail, "Did you mean") && d.Subject != nil && d.Subject.End.Byte <= len(src) {
			name := string(src[d.Subject.Start.Byte:d.Subject.End.Byte])
			if key := strings.ToLower(strings.ReplaceAll(name, "-", "_")); slices.Contains(keys, key) {
				d.Detail += fmt.Sprintf(" Did you mean %q?", key)
			} else {
				d.Detail += " The valid keys are " + strings.Join(keys, ", ") + "."
			}
		}
		errs = append(errs, errors.New(d.Error()))
	}
	return errors.Join(errs...)
}

// attrPos is "file:line" of an attribute, for errors found after decoding.
func attrPos(file *hcl.File, path, key string) string {
	if body, ok := file.Body.(*hclsyntax.Body); ok {
		if a, ok := body.Attributes[key]; ok {
			return fmt.Sprintf("%s:%d", path, a.SrcRange.Start.Line)
		}
	}
	return path
}
