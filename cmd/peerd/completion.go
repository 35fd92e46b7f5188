package main

import (
	_ "embed"
	"fmt"
	"io"
	"maps"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"

	"github.com/peerd/peerd/buildinfo"
	"github.com/peerd/peerd/daemon"
	"github.com/urfave/cli/v2"
)

// The scripts ask peerd itself for the candidates (urfave/cli's hidden
// --generate-bash-completion flag), so they never go stale as commands and
// flags change.
var (
	//go:embed completion/peerd.bash
	bashCompletion string
	//go:embed completion/_peerd
	zshCompletion string
)

func completionCommand() *cli.Command {
	script := func(name, usage, body string) *cli.Command {
		return &cli.Command{
			Name:  name,
			Usage: usage,
			Action: func(c *cli.Context) error {
				if c.NArg() > 0 {
					return usagef("completion %s takes no arguments, got %q", name, c.Args().First())
				}
				_, err := io.WriteString(c.App.Writer, body)
				return err
			},
		}
	}
	return &cli.Command{
		Name:      "completion",
		Usage:     "print a bash or zsh completion script",
		UsageText: "peerd completion bash|zsh",
		// Not "help" among the shells, in --help and in completions.
		HideHelpCommand: true,
		Description: "Try it in the current shell:\n" +
			"  source <(peerd completion bash)      # or zsh\n\n" +
			"Packagers generate the files at build time, and the man page with the hidden 'peerd man':\n" +
			"  peerd completion bash > peerd.bash  # as /usr/share/bash-completion/completions/peerd\n" +
			"  peerd completion zsh  > _peerd      # in /usr/share/zsh/vendor-completions (deb), site-functions (rpm)\n" +
			"  peerd man | gzip -9n  > peerd.1.gz  # in /usr/share/man/man1",
		Subcommands: []*cli.Command{
			script("bash", "print the bash completion script", bashCompletion),
			script("zsh", "print the zsh completion script (#compdef peerd)", zshCompletion),
		},
		Action: func(c *cli.Context) error {
			if c.NArg() > 0 {
				return usagef("no completion for %q: the shells are bash and zsh", c.Args().First())
			}
			return usagef("completion wants a shell: bash or zsh")
		},
	}
}

func manCommand() *cli.Command {
	return &cli.Command{
		Name:   "man",
		Usage:  "print the peerd(1) man page (roff)",
		Hidden: true,
		Action: func(c *cli.Context) error {
			if c.NArg() > 0 {
				return usagef("man takes no arguments, got %q", c.Args().First())
			}
			_, err := io.WriteString(c.App.Writer, manPage(c.App))
			return err
		},
	}
}

// manPage is peerd(1), generated from the app's commands and flags.
//
// Not urfave/cli's ToMan (compared at v2.27.7; its page also renders without
// groff warnings, but says less and misfiles it): it titles the page
// section 8 where packages install it as peerd.1; makes every command a
// top-level section beside an empty COMMANDS, and subcommands bare
// (".SS list", not "peerd keyring list"); leaves out the commands'
// descriptions (upgrade's waves and its phase legend), the environment
// variables, FILES and EXIT STATUS; gives SYNOPSIS as "peerd" alone; prints
// `--flag="":` even for numbers and durations, and a zero default next to
// the default the usage states; and sets flags with hyphens, not \-, so
// groff builds that render "-" as U+2010 (groff_man(7) asks for \-) give
// options that cannot be copied from the page.
func manPage(app *cli.App) string {
	var b strings.Builder
	// No date: the page of one version is the same whenever it is built.
	fmt.Fprintf(&b, ".TH PEERD 1 \"\" \"peerd %s\" \"User Commands\"\n.nh\n", roffText(buildinfo.Version))
	fmt.Fprintf(&b, ".SH NAME\npeerd \\- %s\n", roffText(app.Usage))
	b.WriteString(".SH SYNOPSIS\n.B peerd\n.I command\n.RI [ options \"] [\" arguments ]\n")
	b.WriteString(".SH DESCRIPTION\n")
	roffParagraphs(&b, app.Description)
	b.WriteString(".PP\nEvery command takes \\fB\\-\\-help\\fP.\n")
	b.WriteString(".SH COMMANDS\n")
	manCommands(&b, "peerd", nil, app.Commands)
	manEnvironment(&b, app.Commands)
	b.WriteString(manTrailer)
	return b.String()
}

func manCommands(b *strings.Builder, path string, parentFlags []cli.Flag, cmds []*cli.Command) {
	for _, cmd := range cmds {
		if cmd.Hidden {
			continue
		}
		name := path + " " + cmd.Name
		flags := visibleFlags(cmd.Flags)
		synopsis := []string{name}
		if cmd.UsageText != "" {
			synopsis = strings.Split(cmd.UsageText, "\n")
		} else {
			if len(flags) > 0 {
				synopsis[0] += " [options]"
			}
			if cmd.ArgsUsage != "" {
				synopsis[0] += " " + cmd.ArgsUsage
			}
		}
		fmt.Fprintf(b, ".SS %s\n", roffText(strings.TrimSpace(synopsis[0])))
		for _, line := range synopsis[1:] {
			fmt.Fprintf(b, ".SS %s\n", roffText(strings.TrimSpace(line)))
		}
		fmt.Fprintf(b, ".PP\n%s.\n", roffText(upperFirst(cmd.Usage)))
		roffParagraphs(b, cmd.Description)
		if len(flags) > 0 && sameFlags(flags, parentFlags) {
			fmt.Fprintf(b, ".PP\nIt takes the options of \\fB%s\\fP.\n", roffText(path))
		} else {
			for _, f := range flags {
				manFlag(b, f)
			}
		}
		manCommands(b, name, flags, cmd.Subcommands)
	}
}

// visibleFlags leaves out hidden flags and --help, which every command has.
func visibleFlags(flags []cli.Flag) []cli.Flag {
	var out []cli.Flag
	for _, f := range flags {
		if vf, ok := f.(cli.VisibleFlag); ok && !vf.IsVisible() || f.Names()[0] == "help" {
			continue
		}
		out = append(out, f)
	}
	return out
}

func sameFlags(a, b []cli.Flag) bool {
	return slices.EqualFunc(a, b, func(x, y cli.Flag) bool { return x.Names()[0] == y.Names()[0] })
}

func manFlag(b *strings.Builder, f cli.Flag) {
	df, ok := f.(cli.DocGenerationFlag)
	if !ok {
		return
	}
	placeholder, usage := unquoteUsage(df.GetUsage())
	var names []string
	for _, n := range f.Names() {
		dashes := "\\-\\-"
		if len(n) == 1 {
			dashes = "\\-"
		}
		names = append(names, "\\fB"+dashes+strings.ReplaceAll(n, "-", `\-`)+"\\fP")
	}
	b.WriteString(".TP\n" + strings.Join(names, ", "))
	if df.TakesValue() {
		if placeholder == "" {
			placeholder = "VALUE"
			switch f.(type) {
			case *cli.DurationFlag:
				placeholder = "DURATION"
			case *cli.IntFlag:
				placeholder = "N"
			}
		}
		fmt.Fprintf(b, " \\fI%s\\fP", roffText(placeholder))
	}
	b.WriteString("\n" + roffText(usage))
	// Only a default the usage does not already state; zero values say nothing.
	if def := df.GetDefaultText(); df.TakesValue() && !strings.Contains(usage, "default") {
		if def == "" {
			def = df.GetValue()
		}
		def = strings.Trim(def, `"`)
		// A package's page is built on the build machine, maybe for another platform.
		if def == runtime.GOOS || def == runtime.GOARCH {
			def = "the running machine's"
		}
		if def != "" && def != "0" && def != "0s" {
			fmt.Fprintf(b, " (default: %s)", roffText(def))
		}
	}
	if sf, ok := f.(cli.DocGenerationSliceFlag); ok && sf.IsSliceFlag() && !strings.Contains(usage, "repeatable") {
		b.WriteString(" (repeatable)")
	}
	b.WriteString("\n")
}

// unquoteUsage is urfave/cli's rule: a `quoted` word in a flag's usage is the
// name of its value.
func unquoteUsage(usage string) (placeholder, text string) {
	before, rest, ok := strings.Cut(usage, "`")
	if !ok {
		return "", usage
	}
	name, after, ok := strings.Cut(rest, "`")
	if !ok {
		return "", usage
	}
	// urfave/cli unquotes only the first; the others are just quotes.
	return name, before + name + strings.ReplaceAll(after, "`", "")
}

// manEnvironment lists every PEERD_* variable with the flag it stands for,
// taken from the flags themselves so the list cannot drift.
func manEnvironment(b *strings.Builder, cmds []*cli.Command) {
	type use struct{ flags, commands []string }
	uses := map[string]*use{}
	var walk func(path string, cmds []*cli.Command)
	walk = func(path string, cmds []*cli.Command) {
		for _, cmd := range cmds {
			if cmd.Hidden {
				continue
			}
			for _, f := range cmd.Flags {
				df, ok := f.(cli.DocGenerationFlag)
				if !ok {
					continue
				}
				for _, env := range df.GetEnvVars() {
					u := uses[env]
					if u == nil {
						u = &use{}
						uses[env] = u
					}
					if flag := "--" + f.Names()[0]; !slices.Contains(u.flags, flag) {
						u.flags = append(u.flags, flag)
					}
					u.commands = append(u.commands, path+cmd.Name)
				}
			}
			walk(path+cmd.Name+" ", cmd.Subcommands)
		}
	}
	walk("", cmds)

	b.WriteString(".SH ENVIRONMENT\n.PP\n" +
		"Each flag of \\fBpeerd agent\\fP can also be set by \\fBPEERD_\\fP and the flag's name in upper case " +
		"with \\fB_\\fP for \\fB\\-\\fP. A flag wins over its variable, and a variable over the config file.\n")
	texts := map[string]string{
		// Read by sign itself rather than through a flag.
		"PEERD_SIGN_PASSWORD": "the password of an encrypted signing key, for \\fBsign\\fP without \\fB\\-\\-password\\-file\\fP",
	}
	for env, u := range uses {
		texts[env] = fmt.Sprintf("\\fB%s\\fP of \\fB%s\\fP",
			roffText(strings.Join(u.flags, ", ")), roffText(strings.Join(u.commands, ", ")))
	}
	texts["PEERD_DATA_DIR"] += "; client commands also look for the agent's socket \\fBpeerd.sock\\fP there when no \\fB\\-\\-socket\\fP is given"
	for _, env := range slices.Sorted(maps.Keys(texts)) {
		fmt.Fprintf(b, ".TP\n.B %s\n%s\n", env, texts[env])
	}
}

// roffParagraphs sets help text as roff: blank lines separate paragraphs,
// and lines indented by two spaces (examples) are kept as they are.
func roffParagraphs(b *strings.Builder, text string) {
	if text == "" {
		return
	}
	verbatim := false
	b.WriteString(".PP\n")
	for _, line := range strings.Split(text, "\n") {
		switch indented := strings.HasPrefix(line, "  "); {
		case indented && !verbatim:
			b.WriteString(".RS 4\n.nf\n")
			verbatim = true
		case !indented && verbatim:
			b.WriteString(".fi\n.RE\n")
			verbatim = false
		}
		switch {
		case verbatim:
			b.WriteString(roffText(line[2:]) + "\n")
		case strings.TrimSpace(line) == "":
			b.WriteString(".PP\n")
		default:
			b.WriteString(roffText(line) + "\n")
		}
	}
	if verbatim {
		b.WriteString(".fi\n.RE\n")
	}
}

// flagLike is a command-line option in running text: its hyphens must be
// minus signs (\-), or the rendered page shows hyphens that cannot be copied.
var flagLike = regexp.MustCompile(`(^|[\s('"\[|])--?[A-Za-z][A-Za-z0-9-]*`)

// roffText escapes text for roff: backslashes, a leading '.' or "'" (which
// would start a request), and the hyphens of options.
func roffText(s string) string {
	s = strings.ReplaceAll(s, `\`, `\e`)
	s = flagLike.ReplaceAllStringFunc(s, func(m string) string { return strings.ReplaceAll(m, "-", `\-`) })
	if strings.HasPrefix(s, ".") || strings.HasPrefix(s, "'") {
		s = `\&` + s
	}
	return s
}

func upperFirst(s string) string {
	if s == "" {
		return s
	}
	return strings.ToUpper(s[:1]) + s[1:]
}

// manTrailer is what the flags cannot say.
var manTrailer = `.SH FILES
.TP
.B /etc/peerd/peerd.hcl
the packaged agent's configuration (\fB\-\-config\fP, HCL); each key is an agent flag's name with \fB_\fP for \fB\-\fP.
An unknown key is an error naming the file, the line and the key meant, or else the valid keys.
Check files with \fBpeerd validate\fP; \fB\-\-config\-dir\fP adds a directory of \fB*.hcl\fP and \fB*.json\fP files.
.TP
.B /etc/peerd/peerd.env
optional \fBPEERD_*\fP variables, one \fIVAR\fP=\fIvalue\fP a line, that the systemd unit passes to the agent.
.TP
.B /var/lib/peerd
the packaged agent's data directory (\fB\-\-data\-dir\fP): cluster snapshot, known peers, rollout state,
and the control socket \fBpeerd.sock\fP that client commands use.
.TP
.B /var/lib/peerd/versions
the versions a self-upgrade installed, each verified; \fIcurrent\fP is the one to run and \fIprevious\fP what a rollback
brings back. The installed \fBpeerd\fP binary is never written over: at start it runs \fIcurrent\fP when that is newer.
.SH EXIT STATUS
.TP
.B 0
success.
.TP
.B 1
an error; the one line on standard error says what was wrong and what to do.
.TP
.B 2
a malformed command line: an unknown command or flag, or wrong arguments.
.TP
.B ` + strconv.Itoa(daemon.ExitRestart) + `
\fBpeerd agent \-\-restart supervisor\fP installed an upgrade and exits for its supervisor (systemd, Nomad)
to start it again, now at the new version: restart it, it is not a failure.
.SH SEE ALSO
.BR systemd.service (5),
.BR minisign (1)
`
