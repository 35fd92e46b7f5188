package main

import (
	"errors"
	"fmt"
	"strings"

	"github.com/peerd/peerd/daemon"
	"github.com/urfave/cli/v2"
)

func validateCommand() *cli.Command {
	return &cli.Command{
		Name:      "validate",
		Usage:     "check agent config files and directories without starting an agent",
		ArgsUsage: "FILE|DIR...",
		Description: "Reads the files as 'peerd agent --config FILE --config-dir DIR' would, in the order given\n" +
			"(a directory's *.hcl and *.json files by name), on top of the defaults, and reports every\n" +
			"problem at once, as 'consul validate' does. Flags and PEERD_* variables are not read: the\n" +
			"files must be a whole config (data_dir included). Exit 0 when valid, 1 when not.\n\n" +
			"Example:\n" +
			"  peerd validate /etc/peerd/peerd.hcl /etc/peerd/peerd.d",
		Flags: []cli.Flag{&cli.BoolFlag{Name: "json", Usage: "print the result as one JSON document"}},
		Action: func(c *cli.Context) error {
			if c.NArg() == 0 {
				return usagef("validate wants the config FILE or DIR to check")
			}
			cfg := daemon.DefaultConfig()
			err := daemon.LoadPaths(&cfg, c.Args().Slice()...)
			if err == nil {
				err = cfg.Validate()
			}
			if c.Bool("json") {
				out := validation{Valid: err == nil, Files: cfg.ConfigFiles, Errors: []string{}}
				if out.Files == nil {
					out.Files = []string{}
				}
				if err != nil {
					out.Errors = problems(err)
				}
				if perr := printJSON(c, out); perr != nil {
					return perr
				}
				if err != nil {
					return cli.Exit("", 1)
				}
				return nil
			}
			if err != nil {
				return fmt.Errorf("config is not valid: %w", err)
			}
			fmt.Fprintf(c.App.Writer, "config is valid: %s\n", strings.Join(cfg.ConfigFiles, ", "))
			return nil
		},
	}
}

// validation is what 'peerd validate --json' prints.
type validation struct {
	Valid  bool     `json:"valid"`
	Files  []string `json:"files"`
	Errors []string `json:"errors"`
}

// problems splits an errors.Join of problems into one string each.
func problems(err error) []string {
	var joined interface{ Unwrap() []error }
	if errors.As(err, &joined) {
		var out []string
		for _, e := range joined.Unwrap() {
			out = append(out, problems(e)...)
		}
		return out
	}
	return []string{err.Error()}
}
