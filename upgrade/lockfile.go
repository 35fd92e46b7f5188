package upgrade

import (
	"encoding/json"
	"fmt"
)

// decode reads the plan lock file's content into l; the file is read once,
// before the lock is shared.
func (l *planLock) decode(b []byte) error {
	var st lockState
	if err := json.Unmarshal(b, &st); err != nil {
		return err
	}
	if st.PlanSeq > st.Seq {
		return fmt.Errorf("plan %q holds the lock at sequence %d, but the highest sequence seen is %d", st.PlanID, st.PlanSeq, st.Seq)
	}
	l.st = st
	return nil
}
