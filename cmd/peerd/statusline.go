package main

import (
	"fmt"
	"io"
	"os"

	"golang.org/x/term"
)

// statusLine shows a rollout's progress as it changes. On a terminal it
// redraws one line in place, so a long rollout does not scroll the plan
// off the screen; anywhere else (a pipe, a file, a CI log) it prints one
// line per change, as a script or a log reader needs every step.
type statusLine struct {
	w     io.Writer
	tty   bool // redraw in place
	width int  // the terminal's columns, 0 when unknown; a line is cut to fit

	last string // the line shown last
	open bool   // tty: last is drawn and not ended by a newline
}

// newStatusLine redraws only where w is a terminal that understands the
// erase-line sequence: TERM=dumb (an editor's shell buffer, say) gets the
// plain lines.
func newStatusLine(w io.Writer) *statusLine {
	s := &statusLine{w: w}
	f, ok := w.(*os.File)
	if !ok || os.Getenv("TERM") == "dumb" || !term.IsTerminal(int(f.Fd())) {
		return s
	}
	s.tty = true
	if cols, _, err := term.GetSize(int(f.Fd())); err == nil {
		s.width = cols
	}
	return s
}

// Update shows line unless it is the one already shown.
func (s *statusLine) Update(line string) {
	if line == s.last {
		return
	}
	s.last = line
	if !s.tty {
		fmt.Fprintln(s.w, line)
		return
	}
	// \r\x1b[2K: back to the line's start and erase it. A line wider than
	// the terminal would wrap, and \r would then return only to its last
	// row, leaving the rows above on screen: cut it to fit instead.
	fmt.Fprint(s.w, "\r\x1b[2K", s.fit(line))
	s.open = true
}

// Note prints text on a line of its own (on a terminal above the status
// line, which is drawn again below it).
func (s *statusLine) Note(text string) {
	if !s.tty {
		fmt.Fprintln(s.w, text)
		return
	}
	fmt.Fprint(s.w, "\r\x1b[2K", text, "\n")
	if s.open {
		fmt.Fprint(s.w, s.fit(s.last))
	}
}

// Finish ends the redrawn line, so that the last state stays on screen as
// an ordinary line and what is printed next starts below it.
func (s *statusLine) Finish() {
	if s.open {
		fmt.Fprintln(s.w)
		s.open = false
	}
}

// fit cuts line to the terminal's width less one column: writing the last
// column makes some terminals wrap at once.
func (s *statusLine) fit(line string) string {
	if s.width <= 1 {
		return line
	}
	r := []rune(line)
	if len(r) < s.width {
		return line
	}
	return string(r[:s.width-2]) + "…"
}
