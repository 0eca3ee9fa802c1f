package repository

import (
	"context"
	"os"
	"path/filepath"
	"time"

	"github.com/fsnotify/fsnotify"
)

// settle is how long the watcher waits after a change for the rest of it
// (a copy in progress, several files) before it scans.
const settle = 300 * time.Millisecond

// Watch scans the repository whenever it changes (fsnotify on the
// repository, its models' and their versions' directories) and every
// poll as well, which covers file systems without notifications (NFS,
// some container mounts); it returns when ctx ends.
func (r *Repository) Watch(ctx context.Context, poll time.Duration) {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		r.o.Log.Warn("model repository: no change notifications, polling only", "every", poll, "error", err)
	} else {
		defer w.Close()
		r.watchTree(w)
	}
	var events <-chan fsnotify.Event
	var errs <-chan error
	if w != nil {
		events, errs = w.Events, w.Errors
	}
	tick := time.NewTicker(max(poll, settle))
	defer tick.Stop()
	var pending <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case _, ok := <-events:
			if !ok {
				events = nil
				continue
			}
			if pending == nil {
				pending = time.After(settle)
			}
		case err, ok := <-errs:
			if !ok {
				errs = nil
				continue
			}
			r.o.Log.Debug("model repository notifications", "error", err)
		case <-pending:
			pending = nil
			if w != nil {
				r.watchTree(w) // new directories
			}
			r.Scan()
		case <-tick.C:
			r.Scan()
		}
	}
}

// watchTree watches the repository's directory and those below it, two
// levels down (models, versions).
func (r *Repository) watchTree(w *fsnotify.Watcher) {
	_ = w.Add(r.o.Dir)
	models, _ := os.ReadDir(r.o.Dir)
	for _, m := range models {
		if !m.IsDir() {
			continue
		}
		dir := filepath.Join(r.o.Dir, m.Name())
		_ = w.Add(dir)
		versions, _ := os.ReadDir(dir)
		for _, v := range versions {
			if v.IsDir() {
				_ = w.Add(filepath.Join(dir, v.Name()))
			}
		}
	}
}
