// Command peerd is the peerd agent and its client: every node runs
// `peerd agent`; the other subcommands talk to the local agent.
package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/urfave/cli/v2"
)

func main() {
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
		Writer:               stdout,
		ErrWriter:            stderr,
		HideHelpCommand:      true,
		EnableBashCompletion: true,
		// Errors are printed once, by run, on one line.
		ExitErrHandler: func(*cli.Context, error) {},
		OnUsageError:   onUsageError,
		Commands: []*cli.Command{
			agentCommand(),
			membersCommand(),
			appsCommand(),
			infoCommand(),
			leaveCommand(),
			forgetCommand(),
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
	app.CommandNotFound = func(c *cli.Context, name string) {
		fmt.Fprintf(stderr, "peerd: unknown command %q; run 'peerd --help' to list the commands\n", name)
		os.Exit(2)
	}
	for _, cmd := range app.Commands {
		cmd.OnUsageError = onUsageError
		// No `help` subcommand under each command: --help is there, and
		// completion would offer "help h" where files belong.
		cmd.HideHelpCommand = true
	}
	return app
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
