package main

import (
	"crypto/rand"
	"fmt"
	"os"
	"runtime"

	"aead.dev/minisign"
	"github.com/peerd/peerd/upgrade"
	"github.com/peerd/peerd/upgrade/artifact"
	"github.com/urfave/cli/v2"
)

func signCommand() *cli.Command {
	return &cli.Command{
		Name:      "sign",
		Usage:     "sign an artifact with minisign, binding its version, platform and sha256",
		ArgsUsage: "ARTIFACT",
		Description: "Writes ARTIFACT.minisig (or --out). The signature's trusted comment names the target,\n" +
			"version, os/arch and sha256, so a validly signed binary of another version or platform\n" +
			"cannot be substituted. The same can be made with the minisign tool:\n" +
			"  minisign -S -s KEY -m ARTIFACT -t \"peerd-artifact target=peerd version=2.0.0 os=linux arch=amd64 sha256=... size=...\"\n" +
			"Agents verify it against their --trust-key files. Make a key pair with 'peerd sign --generate PREFIX'.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "key", Usage: "minisign secret key `FILE`"},
			&cli.StringFlag{Name: "password-file", Usage: "`FILE` holding the key's password, for an encrypted key (or PEERD_SIGN_PASSWORD)", EnvVars: []string{"PEERD_SIGN_PASSWORD_FILE"}},
			&cli.StringFlag{Name: "version", Usage: "the artifact's `VERSION` (what it reports in 'version --json')"},
			&cli.StringFlag{Name: "target", Value: upgrade.TargetPeerd, Usage: "what the artifact is: peerd, or a managed application's name"},
			&cli.StringFlag{Name: "os", Value: runtime.GOOS, Usage: "the artifact's OS"},
			&cli.StringFlag{Name: "arch", Value: runtime.GOARCH, Usage: "the artifact's architecture"},
			&cli.StringFlag{Name: "out", Usage: "signature `FILE` (default ARTIFACT.minisig)"},
			&cli.BoolFlag{Name: "rollback", Usage: "make a rollback statement: consent that nodes at a newer version go back to this one (a plain release signature never allows that)"},
			&cli.StringFlag{Name: "generate", Usage: "instead of signing, write a new unencrypted key pair `PREFIX`.key and PREFIX.pub"},
		},
		Action: func(c *cli.Context) error {
			if prefix := c.String("generate"); prefix != "" {
				return generateSigningKey(c, prefix)
			}
			if c.NArg() != 1 {
				return usagef("sign takes one ARTIFACT, got %d arguments", c.NArg())
			}
			if c.String("key") == "" || c.String("version") == "" {
				return usagef("--key and --version are required")
			}
			key, err := loadSigningKey(c.String("key"), c.String("password-file"))
			if err != nil {
				return err
			}
			path := c.Args().First()
			data, err := os.ReadFile(path)
			if err != nil {
				return fmt.Errorf("read artifact: %w", err)
			}
			sha, size, err := artifact.DigestFile(path)
			if err != nil {
				return err
			}
			m := artifact.Manifest{Target: c.String("target"), Version: c.String("version"), OS: c.String("os"), Arch: c.String("arch"), SHA256: sha, Size: size,
				Rollback: c.Bool("rollback")}
			sig, err := artifact.Sign(key, data, m)
			if err != nil {
				return err
			}
			out := c.String("out")
			if out == "" {
				out = path + ".minisig"
			}
			if err := os.WriteFile(out, sig, 0o644); err != nil {
				return fmt.Errorf("write signature: %w", err)
			}
			fmt.Fprintf(c.App.Writer, "wrote %s (%s)\n", out, m.TrustedComment())
			return nil
		},
	}
}

func loadSigningKey(path, passwordFile string) (minisign.PrivateKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return minisign.PrivateKey{}, fmt.Errorf("read signing key: %w", err)
	}
	if !minisign.IsEncrypted(b) {
		var k minisign.PrivateKey
		if err := k.UnmarshalText(b); err != nil {
			return k, fmt.Errorf("signing key %s: %w", path, err)
		}
		return k, nil
	}
	password := os.Getenv("PEERD_SIGN_PASSWORD")
	if passwordFile != "" {
		p, err := os.ReadFile(passwordFile)
		if err != nil {
			return minisign.PrivateKey{}, fmt.Errorf("read password file: %w", err)
		}
		password = string(p)
	}
	if password == "" {
		return minisign.PrivateKey{}, fmt.Errorf("signing key %s is encrypted: give its password with --password-file or PEERD_SIGN_PASSWORD", path)
	}
	k, err := minisign.DecryptKey(password, b)
	if err != nil {
		return k, fmt.Errorf("decrypt signing key %s: %w (wrong password?)", path, err)
	}
	return k, nil
}

func generateSigningKey(c *cli.Context, prefix string) error {
	pub, priv, err := minisign.GenerateKey(rand.Reader)
	if err != nil {
		return err
	}
	privText, err := priv.MarshalText()
	if err != nil {
		return err
	}
	pubText, err := pub.MarshalText()
	if err != nil {
		return err
	}
	if err := os.WriteFile(prefix+".key", privText, 0o600); err != nil {
		return fmt.Errorf("write secret key: %w", err)
	}
	pubFile := fmt.Sprintf("untrusted comment: minisign public key %X\n%s\n", pub.ID(), pubText)
	if err := os.WriteFile(prefix+".pub", []byte(pubFile), 0o644); err != nil {
		return fmt.Errorf("write public key: %w", err)
	}
	fmt.Fprintf(c.App.Writer, "wrote %s.key (keep it secret) and %s.pub (give it to agents with --trust-key)\n", prefix, prefix)
	return nil
}
