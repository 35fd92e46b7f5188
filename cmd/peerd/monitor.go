package main

import (
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/urfave/cli/v2"
)

func monitorCommand() *cli.Command {
	return &cli.Command{
		Name:  "monitor",
		Usage: "stream the running agent's log from now on, until interrupted",
		Description: "Prints the agent's log lines as it writes them, as 'consul monitor' does. --log-level\n" +
			"debug shows debug lines even when the agent itself logs at info; --log-level warn only\n" +
			"warnings and errors. The first line says the stream is up. Text lines are key=value, as\n" +
			"the agent logs them; --json prints JSON lines instead (one JSON object per line, keys\n" +
			"time, level, msg and the line's own attributes; see docs/json.md). A monitor that reads\n" +
			"too slowly is told how many lines it lost. Ctrl-C ends it (exit 0); when the agent stops,\n" +
			"it exits 1.\n\n" +
			"Example:\n" +
			"  peerd monitor --log-level debug | grep component=rollout",
		Flags: []cli.Flag{
			clientFlags()[0], // --socket
			&cli.StringFlag{Name: "log-level", Value: "info", Usage: "the lowest `LEVEL` shown: debug, info, warn or error"},
			&cli.BoolFlag{Name: "json", Usage: "print JSON lines: one JSON object per log line"},
		},
		Action: func(c *cli.Context) error {
			level := strings.ToLower(c.String("log-level"))
			switch level {
			case "debug", "info", "warn", "error":
			default:
				return usagef("--log-level %q: want debug, info, warn or error", c.String("log-level"))
			}
			ctx, stop := signal.NotifyContext(c.Context, os.Interrupt, syscall.SIGTERM)
			defer stop()
			return newClient(c).Monitor(ctx, level, c.Bool("json"), c.App.Writer)
		},
	}
}
