package main

import (
	"fmt"

	"github.com/peerd/peerd/daemon"
	"github.com/urfave/cli/v2"
)

func joinCommand() *cli.Command {
	return &cli.Command{
		Name:      "join",
		Usage:     "make the running agent join a cluster at these gossip addresses",
		ArgsUsage: "ADDR...",
		Description: "As --join does at start, for an agent that runs: each ADDR is HOST or HOST:PORT (port\n" +
			"7946 when none is given). It fails when no address answers, and a node whose protocol\n" +
			"range the cluster does not speak is refused.\n\n" +
			"Example:\n" +
			"  peerd join 10.0.0.1 10.0.0.2:7946",
		Flags: clientFlags(),
		Action: func(c *cli.Context) error {
			if c.NArg() == 0 {
				return usagef("join wants the gossip ADDR of at least one member")
			}
			for _, a := range c.Args().Slice() {
				if err := daemon.ValidateJoinAddr(a); err != nil {
					return usagef("join: %w", err)
				}
			}
			res, err := newClient(c).Join(c.Context, c.Args().Slice())
			if err != nil {
				return err
			}
			if c.Bool("json") {
				return printJSON(c, res)
			}
			fmt.Fprintf(c.App.Writer, "joined: %d of %d addresses answered\n", res.Contacted, c.NArg())
			return nil
		},
	}
}

func forceLeaveCommand() *cli.Command {
	return &cli.Command{
		Name:      "force-leave",
		Usage:     "mark a failed member as left, so that the cluster stops waiting for it",
		ArgsUsage: "NODE",
		Description: "For a node that is gone for good: the others stop trying to reach it, and rollouts and\n" +
			"their majorities stop counting it. Only a failed member can be forced out; an alive one\n" +
			"leaves by itself with 'peerd leave'. A node forced out that comes back joins again.",
		Flags: clientFlags(),
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return usagef("force-leave takes one NODE (its name in 'peerd members'), got %d arguments", c.NArg())
			}
			res, err := newClient(c).ForceLeave(c.Context, c.Args().First())
			if err != nil {
				return err
			}
			if c.Bool("json") {
				return printJSON(c, res)
			}
			fmt.Fprintf(c.App.Writer, "%s is %s\n", res.Node, res.Status)
			return nil
		},
	}
}
