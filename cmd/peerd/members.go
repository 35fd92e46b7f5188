package main

import (
	"fmt"
	"sort"
	"strings"
	"text/tabwriter"

	"github.com/urfave/cli/v2"
)

func membersCommand() *cli.Command {
	return &cli.Command{
		Name:  "members",
		Usage: "list the cluster's members as this node sees them",
		Description: "One row per member: name, gossip address, status (alive, leaving, left, failed),\n" +
			"version, protocol range and user tags.",
		Flags: append(clientFlags(),
			&cli.StringFlag{Name: "status", Usage: "show only members with this `STATUS`: alive, leaving, left or failed"},
		),
		Action: func(c *cli.Context) error {
			if c.NArg() > 0 {
				return usagef("members takes no arguments, got %q", c.Args().First())
			}
			members, err := newClient(c).Members(c.Context, c.String("status"))
			if err != nil {
				return err
			}
			if c.Bool("json") {
				return printJSON(c, members)
			}
			w := tabwriter.NewWriter(c.App.Writer, 0, 0, 2, ' ', 0)
			fmt.Fprintln(w, "NAME\tADDR\tSTATUS\tVERSION\tPROTOCOL\tTAGS")
			for _, m := range members {
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%d-%d\t%s\n", m.Name, m.Addr, m.Status, m.Version, m.ProtocolMin, m.ProtocolMax, formatTags(m.Tags))
			}
			return w.Flush()
		},
	}
}

func formatTags(tags map[string]string) string {
	if len(tags) == 0 {
		return "-"
	}
	kv := make([]string, 0, len(tags))
	for k, v := range tags {
		kv = append(kv, k+"="+v)
	}
	sort.Strings(kv)
	return strings.Join(kv, ",")
}
