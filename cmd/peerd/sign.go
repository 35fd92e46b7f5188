package main

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"runtime"
	"strings"

	"aead.dev/minisign"
	"github.com/peerd/peerd/internal/durable"
	"github.com/peerd/peerd/upgrade"
	"github.com/peerd/peerd/upgrade/artifact"
	"github.com/peerd/peerd/upgrade/piece"
	"github.com/urfave/cli/v2"
)

func signCommand() *cli.Command {
	return &cli.Command{
		Name:      "sign",
		Usage:     "sign an artifact with minisign, binding its version, platform and sha256",
		ArgsUsage: "ARTIFACT",
		Description: "Writes ARTIFACT.minisig (or --out). The signature's trusted comment names the target,\n" +
			"version, os/arch, sha256 and the root of its piece list, so a validly signed binary of another version or platform\n" +
			"cannot be substituted. The same can be made with the minisign tool:\n" +
			"  minisign -S -s KEY -m ARTIFACT -t \"peerd-artifact target=peerd version=2.0.0 os=linux arch=amd64 sha256=... size=...\"\n" +
			"(peerd sign adds pieces=ROOT piece_size=N, which agents check against the plan's piece list).\n" +
			"Agents verify it against their --trust-key files. Make a key pair with 'peerd sign --generate PREFIX'.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "key", Usage: "minisign secret key `FILE`"},
			&cli.StringFlag{Name: "password-file", Usage: "`FILE` holding the key's password, for an encrypted key (or PEERD_SIGN_PASSWORD)", EnvVars: []string{"PEERD_SIGN_PASSWORD_FILE"}},
			&cli.StringFlag{Name: "version", Usage: "the artifact's `VERSION` (what it reports in 'version --json')"},
			&cli.StringFlag{Name: "target", Value: upgrade.TargetPeerd, Usage: "what the artifact is, `NAME`: peerd, or a managed application's name"},
			&cli.StringFlag{Name: "os", Value: runtime.GOOS, Usage: "the artifact's `OS` (GOOS)"},
			&cli.StringFlag{Name: "arch", Value: runtime.GOARCH, Usage: "the artifact's architecture, `ARCH` (GOARCH)"},
			&cli.StringFlag{Name: "out", Usage: "signature `FILE` (default ARTIFACT.minisig)"},
			&cli.BoolFlag{Name: "rollback", Usage: "make a rollback statement: consent that nodes at a newer version go back to this one (a plain release signature never allows that)"},
			&cli.StringFlag{Name: "generate", Usage: "instead of signing, write a new unencrypted key pair `PREFIX`.key (mode 0600) and PREFIX.pub, as 'minisign -G -W' does"},
			&cli.BoolFlag{Name: "force", Usage: "with --generate: replace an existing key pair"},
		},
		Action: func(c *cli.Context) error {
			if prefix := c.String("generate"); prefix != "" {
				if c.NArg() > 0 {
					return usagef("sign --generate takes no ARTIFACT, got %q", c.Args().First())
				}
				return generateSigningKey(c, prefix)
			}
			if c.Bool("force") {
				return usagef("--force goes with --generate PREFIX")
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
			if size > 0 {
				// The piece list agents fetch the artifact by: binding its
				// root here lets them check the plan's list is this one.
				l, err := piece.Compute(bytes.NewReader(data), size, piece.SizeFor(size))
				if err != nil {
					return fmt.Errorf("list the artifact's pieces: %w", err)
				}
				m.PieceRoot, m.PieceSize = l.Root(), l.Size
			}
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

// generateSigningKey writes a new key pair in minisign's own formats:
// PREFIX.key as `minisign -G -W` writes an unencrypted secret key, mode
// 0600 even where it replaces a file that was readable by others, and
// PREFIX.pub as minisign writes a public key (one comment line, one key
// line), which `minisign -V -p` and every agent's --trust-key read.
func generateSigningKey(c *cli.Context, prefix string) error {
	keyPath, pubPath := prefix+".key", prefix+".pub"
	if !c.Bool("force") {
		for _, p := range []string{keyPath, pubPath} {
			if _, err := os.Lstat(p); err == nil {
				return fmt.Errorf("%s already exists: a new key pair would replace it, and agents that trust the old public key would refuse what the new one signs; choose another PREFIX, or pass --force to replace the pair", p)
			} else if !errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("check %s: %w", p, err)
			}
		}
	}
	pub, priv, err := minisign.GenerateKey(rand.Reader)
	if err != nil {
		return fmt.Errorf("generate key pair: %w", err)
	}
	privText, err := priv.MarshalText()
	if err != nil {
		return fmt.Errorf("encode secret key: %w", err)
	}
	pubText, err := pub.MarshalText()
	if err != nil {
		return fmt.Errorf("encode public key: %w", err)
	}
	// MarshalText is a comment line of its own wording, then the key.
	lines := strings.Split(strings.TrimSpace(string(pubText)), "\n")
	pubFile := fmt.Sprintf("untrusted comment: minisign public key %016X\n%s\n", pub.ID(), lines[len(lines)-1])
	// durable.WriteFile writes a new file and renames it over the old one,
	// so the mode is the one given, not the replaced file's.
	// minisign ends its key files with a newline; MarshalText does not.
	if !bytes.HasSuffix(privText, []byte("\n")) {
		privText = append(privText, '\n')
	}
	if err := durable.WriteFile(keyPath, privText, 0o600); err != nil {
		return fmt.Errorf("write secret key: %w", err)
	}
	if err := durable.WriteFile(pubPath, []byte(pubFile), 0o644); err != nil {
		return fmt.Errorf("write public key: %w", err)
	}
	fmt.Fprintf(c.App.Writer, "wrote %s (keep it secret) and %s (give it to agents with --trust-key)\n", keyPath, pubPath)
	return nil
}
