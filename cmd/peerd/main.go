// Command peerd is the peerd agent and its client: every node runs
// `peerd agent`; the other subcommands talk to the local agent.
package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/peerd/peerd/apps"
	"github.com/peerd/peerd/buildinfo"
	"github.com/urfave/cli/v2"
)

func init() {
	// --version prints what 'peerd version' does.
	cli.VersionPrinter = func(c *cli.Context) {
		_ = versionCommand().Action(c)
	}
}

func main() {
	apps.ExecShim() // first: as the shim it must exec the app before anything else runs
	os.Exit(run(os.Args, os.Stdout, os.Stderr))
}

// run is main without os.Exit, so tests can drive the CLI.
func run(args []string, stdout, stderr io.Writer) int {
	args = appArgs(args)
	app := newApp(stdout, stderr)
	if err := app.Run(args); err != nil {
		var ec cli.ExitCoder
		if errors.As(err, &ec) && ec.Error() == "" {
			return ec.ExitCode()
		}
		// Validation reports every problem at once (errors.Join); keep them on one line.
		fmt.Fprintf(stderr, "peerd: %s\n", strings.ReplaceAll(err.Error(), "\n", "; "))
		var ue usageError
		if errors.As(err, &ue) {
			return 2
		}
		return 1
	}
	return 0
}

func newApp(stdout, stderr io.Writer) *cli.App {
	app := &cli.App{
		Name:  "peerd",
		Usage: "form a peer-to-peer fleet and upgrade it in waves without downtime",
		Description: "Every node runs 'peerd agent'. The agents form a Serf cluster and refuse a node\n" +
			"whose protocol range does not overlap the cluster's active protocol.\n" +
			"The other commands talk to the local agent over its unix socket.",
		Writer:    stdout,
		ErrWriter: stderr,
		// --version and -v, as consul, nomad and serf have them.
		Version:              buildinfo.Version,
		EnableBashCompletion: true,
		// `peerd` alone is a mistake, as `consul` alone is: the usage, on
		// stderr, and exit 2. An unknown command gets here too.
		Action: func(c *cli.Context) error {
			if c.NArg() > 0 {
				return usagef("unknown command %q; run 'peerd help' to list the commands", c.Args().First())
			}
			c.App.Writer = c.App.ErrWriter
			defer func() { c.App.Writer = stdout }()
			_ = cli.ShowAppHelp(c)
			return cli.Exit("", 2)
		},
		// Errors are printed once, by run, on one line.
		ExitErrHandler: func(*cli.Context, error) {},
		OnUsageError:   onUsageError,
		Commands: []*cli.Command{
			agentCommand(),
			validateCommand(),
			membersCommand(),
			appsCommand(),
			infoCommand(),
			leaveCommand(),
			joinCommand(),
			forceLeaveCommand(),
			forgetCommand(),
			keyringCommand(),
			monitorCommand(),
			upgradeCommand(),
			installCommand(),
			mkpatchCommand(),
			signCommand(),
			versionCommand(),
			keygenCommand(),
			completionCommand(),
			manCommand(),
		},
	}
	var prepare func(cmds []*cli.Command)
	prepare = func(cmds []*cli.Command) {
		for _, cmd := range cmds {
			cmd.OnUsageError = onUsageError
			// No `help` subcommand under each command: --help is there, and
			// completion would offer "help h" where files belong.
			cmd.HideHelpCommand = true
			if cmd.ArgsUsage == "" && len(cmd.Subcommands) == 0 && cmd.Action != nil {
				cmd.Action = noArgs(cmd.Name, cmd.Action)
			} else if cmd.ArgsUsage != "" && cmd.Action != nil {
				cmd.Action = flagsFirst(cmd, cmd.Action)
			}
			prepare(cmd.Subcommands)
		}
	}
	prepare(app.Commands)
	return app
}

// noArgs refuses arguments to a command that takes none (exit 2), rather
// than ignoring them: 'peerd leave now' must not look as if "now" meant
// something.
func noArgs(name string, action cli.ActionFunc) cli.ActionFunc {
	return func(c *cli.Context) error {
		if c.NArg() > 0 {
			return usagef("%s takes no arguments, got %q (flags start with --)", name, c.Args().First())
		}
		return action(c)
	}
}

// flagsFirst refuses one of the command's flags given after its
// arguments: urfave/cli reads flags only before the first argument, so
// 'peerd join 10.0.0.1 --socket S' would take "--socket" for an address.
func flagsFirst(cmd *cli.Command, action cli.ActionFunc) cli.ActionFunc {
	names := map[string]bool{}
	for _, f := range cmd.Flags {
		for _, n := range f.Names() {
			names[n] = true
		}
	}
	return func(c *cli.Context) error {
		for _, a := range c.Args().Slice() {
			name, _, _ := strings.Cut(strings.TrimLeft(a, "-"), "=")
			if strings.HasPrefix(a, "-") && names[name] {
				return usagef("%s: put %s before the arguments (peerd %s [options] %s)", cmd.Name, a, cmd.Name, cmd.ArgsUsage)
			}
		}
		return action(c)
	}
}

// appArgs turns `peerd upgrade APP [SUB] ...` and `peerd install APP ...`
// into `peerd upgrade [SUB] --app APP ...`: urfave/cli stops reading flags
// at the first argument, and an application's name reads best first.
func appArgs(args []string) []string {
	if len(args) < 3 || (args[1] != "upgrade" && args[1] != "install") || strings.HasPrefix(args[2], "-") {
		return args
	}
	subs := map[string]bool{"help": true}
	for _, c := range upgradeSubcommands() {
		subs[c.Name] = true
	}
	if subs[args[2]] {
		return args
	}
	out := []string{args[0], args[1]}
	rest := args[3:]
	if args[1] == "upgrade" && len(rest) > 0 && subs[rest[0]] {
		out = append(out, rest[0])
		rest = rest[1:]
	}
	out = append(out, "--app", args[2])
	return append(out, rest...)
}

// usageError is a mistake in the command line; it exits 2, like flag parsing errors do.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

func onUsageError(c *cli.Context, err error, _ bool) error {
	name := "peerd"
	if c.Command != nil && c.Command.Name != "" {
		name += " " + c.Command.Name
	}
	return usageError{fmt.Errorf("%w (see '%s --help')", err, name)}
}

func usagef(format string, args ...any) error {
	return usageError{fmt.Errorf(format, args...)}
}
