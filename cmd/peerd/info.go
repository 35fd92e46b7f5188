package main

import (
	"fmt"
	"sort"
	"strings"

	"github.com/urfave/cli/v2"
)

func infoCommand() *cli.Command {
	return &cli.Command{
		Name:  "info",
		Usage: "show this node, the cluster's size and its active protocol",
		Description: "The active protocol is the lowest maximum protocol among the members: the\n" +
			"newest wire protocol every member speaks.",
		Flags: clientFlags(),
		Action: func(c *cli.Context) error {
			info, err := newClient(c).Info(c.Context)
			if err != nil {
				return err
			}
			if c.Bool("json") {
				return printJSON(c, info)
			}
			var counts []string
			for s, n := range info.Cluster.ByStatus {
				counts = append(counts, fmt.Sprintf("%d %s", n, s))
			}
			sort.Strings(counts)
			w := c.App.Writer
			fmt.Fprintf(w, "node:             %s (%s)\n", info.Node.Name, info.Node.Addr)
			fmt.Fprintf(w, "version:          %s (protocol %d-%d, %s/%s)\n", info.Build.Version, info.Build.ProtocolMin, info.Build.ProtocolMax, info.Build.OS, info.Build.Arch)
			fmt.Fprintf(w, "peer http:        %s\n", info.Node.HTTPAddr)
			fmt.Fprintf(w, "cluster size:     %d (%s)\n", info.Cluster.Size, strings.Join(counts, ", "))
			fmt.Fprintf(w, "active protocol:  %d (members speak %d-%d)\n", info.Cluster.ActiveProtocol, info.Cluster.ProtocolMin, info.Cluster.ActiveProtocol)
			return nil
		},
	}
}
