package main

import (
	"fmt"
	"text/tabwriter"

	"github.com/urfave/cli/v2"
)

func appsCommand() *cli.Command {
	return &cli.Command{
		Name:  "apps",
		Usage: "list the managed applications on every node: version, state and address",
		Description: "Applications are declared in the agent's config file (app \"NAME\" { ... } blocks);\n" +
			"each agent supervises its own and advertises their state to the cluster. STATE is\n" +
			"starting, running (healthy), unhealthy, backoff (crashed, restarting), stopped or\n" +
			"not-installed. PROTOCOL is the range of application protocols the running version\n" +
			"speaks, as its bundle's peerd-app.json declares it (- when it declares none); a\n" +
			"release that shares no protocol with a running instance is refused.",
		Flags: clientFlags(),
		Action: func(c *cli.Context) error {
			if c.NArg() > 0 {
				return usagef("apps takes no arguments, got %q", c.Args().First())
			}
			rows, err := newClient(c).Apps(c.Context)
			if err != nil {
				return err
			}
			if c.Bool("json") {
				return printJSON(c, rows)
			}
			if len(rows) == 0 {
				fmt.Fprintln(c.App.Writer, "no managed applications (declare them with app \"NAME\" { ... } in the agent config)")
				return nil
			}
			w := tabwriter.NewWriter(c.App.Writer, 0, 0, 2, ' ', 0)
			fmt.Fprintln(w, "APP\tNODE\tVERSION\tPROTOCOL\tSTATE\tADDRESS\tNODE STATUS")
			for _, r := range rows {
				state := r.State
				if r.Reason != "" {
					state += " (" + r.Reason + ")"
				}
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.Name, r.Node, dash(r.Version), dash(r.Protocol), state, dash(r.Address), r.NodeStatus)
			}
			return w.Flush()
		},
	}
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
