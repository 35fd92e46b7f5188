package lease

// Quorum is the majority of n voters, n/2+1. Any two sets of Quorum(n)
// voters out of the same n share at least one voter, and that voter grants
// only one wave at a time: this is the whole safety argument of the lease.
func Quorum(n int) int { return n/2 + 1 }

// Tally counts the answers to one lease request against the plan's
// snapshot. The majority is of the snapshot, not of whoever answered, so
// that a minority side of a partition can never reach it. A Tally is not
// safe for concurrent use.
type Tally struct {
	n                int
	votes            map[string]bool
	granted, refused int
}

// NewTally counts against a snapshot of snapshotSize members.
func NewTally(snapshotSize int) *Tally {
	return &Tally{n: snapshotSize, votes: map[string]bool{}}
}

// Add records a voter's answer. Each voter counts once and its first answer
// stands: a duplicated or replayed answer must not count twice toward a
// majority, nor take back a grant the voter has already persisted.
func (t *Tally) Add(voter string, granted bool) {
	if _, ok := t.votes[voter]; ok {
		return
	}
	t.votes[voter] = granted
	if granted {
		t.granted++
	} else {
		t.refused++
	}
}

// Counts returns how many voters granted and how many refused.
func (t *Tally) Counts() (granted, refused int) { return t.granted, t.refused }

// Granted reports whether at least Quorum(snapshotSize) voters granted.
func (t *Tally) Granted() bool { return t.granted >= Quorum(t.n) }
