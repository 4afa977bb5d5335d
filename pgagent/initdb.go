package pgagent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// hbaConf is the pg_hba.conf InitDB writes. Local connections use peer
// authentication; the "blockrep" ident map lets OS root (the daemon, which
// runs the health check) and the PostgreSQL user log in as the superuser.
// Everything over TCP needs a password (SCRAM).
const hbaConf = `# Written by blockrep pgagent (InitDB).
# TYPE  DATABASE  USER      ADDRESS  METHOD
local   all       %[1]s     peer     map=blockrep
local   all       all                peer
host    all       all       all      scram-sha-256
`

// identConf maps OS users to database users for the peer lines above.
const identConf = `# Written by blockrep pgagent (InitDB).
# MAPNAME   SYSTEM-USERNAME  PG-USERNAME
blockrep    root             %[1]s
blockrep    %[1]s            %[1]s
`

// InitDB prepares a new volume for the stack: it attaches the device, makes
// a filesystem (refusing a device that already holds one unless force),
// mounts it, runs initdb as the PostgreSQL user with the given superuser
// password, configures listen_addresses, port, pg_hba.conf and pg_ident.conf,
// checks that the server starts and passes the health check, then stops
// everything again. Errors are *StepError.
func InitDB(ctx context.Context, cfg Config, password string, force bool) error {
	if password == "" {
		return &StepError{Step: "initdb", Err: errors.New("empty superuser password")}
	}
	s, err := New(cfg)
	if err != nil {
		return err
	}
	s.op.Lock()
	defer s.op.Unlock()
	if err := s.down(ctx, "cleanup"); err != nil {
		return err
	}
	defer func() { _ = s.down(context.WithoutCancel(ctx), "down") }()
	if err := s.runStep(ctx, "device", "up", s.dev.up); err != nil {
		return err
	}
	mk := func(ctx context.Context) error { return s.mkfs(ctx, force) }
	if err := s.runStep(ctx, "mkfs", "up", mk); err != nil {
		return err
	}
	mount := func(ctx context.Context) error {
		if fi, err := os.Stat(s.r.MountPoint); err != nil || !fi.IsDir() {
			return fmt.Errorf("mount point %s is not a directory", s.r.MountPoint)
		}
		return s.fs.mount()
	}
	if err := s.runStep(ctx, "filesystem", "up", mount); err != nil {
		return err
	}
	if err := s.runStep(ctx, "initdb", "up", func(ctx context.Context) error { return s.initdb(ctx, password) }); err != nil {
		return err
	}
	if err := s.runStep(ctx, "postgres", "up", s.pg.up); err != nil {
		return err
	}
	return s.down(ctx, "down")
}

func (s *Stack) mkfs(ctx context.Context, force bool) error {
	dev := s.dev.dev
	// blkid -p probes the device itself (no cache) for any signature, a
	// partition table included; exit 2 means nothing found.
	out, err := run(ctx, "blkid", "-p", "-o", "export", dev)
	if err != nil && exitCode(err) != 2 {
		return err
	}
	if have := blkidSignature(out); err == nil && have != "" && !force {
		return fmt.Errorf("device %s already holds %s (use force to overwrite)", dev, have)
	}
	if s.r.FSType == "xfs" {
		_, err = run(ctx, "mkfs.xfs", "-f", "-q", dev)
	} else {
		_, err = run(ctx, "mkfs.ext4", "-F", "-q", dev)
	}
	if err == nil {
		s.r.Logger.Info("pgagent: filesystem created", "device", dev, "fstype", s.r.FSType)
	}
	return err
}

func (s *Stack) initdb(ctx context.Context, password string) error {
	r := s.r
	// Directories between the mount point and the data dir: root-owned, searchable.
	rel, _ := filepath.Rel(r.MountPoint, filepath.Dir(r.PGData))
	d := r.MountPoint
	for _, part := range strings.Split(rel, string(filepath.Separator)) {
		if part == "." {
			continue
		}
		d = filepath.Join(d, part)
		if err := os.Mkdir(d, 0o755); err != nil && !os.IsExist(err) {
			return err
		}
	}
	if err := os.Mkdir(r.PGData, 0o700); err != nil && !os.IsExist(err) {
		return err
	}
	if err := os.Chown(r.PGData, r.uid, r.gid); err != nil {
		return err
	}
	if err := traversable(r.PGData, r); err != nil {
		return err
	}
	// The password reaches initdb through a file only the PostgreSQL user reads.
	pw, err := os.CreateTemp("", "pgagent-pw-")
	if err != nil {
		return err
	}
	defer os.Remove(pw.Name())
	_, err = pw.WriteString(password + "\n")
	if cerr := pw.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chown(pw.Name(), r.uid, r.gid)
	}
	if err != nil {
		return err
	}
	if _, err := r.runAs(ctx, filepath.Join(r.PGBinDir, "initdb"), "-D", r.PGData, "-U", r.PGUser,
		"--pwfile="+pw.Name(), "--auth-local=peer", "--auth-host=scram-sha-256",
		"-E", "UTF8", "--locale=C.UTF-8"); err != nil {
		return err
	}
	// syncfs: crash recovery on a new Primary starts without first fsyncing every file
	// of the data directory one by one (seconds of a failover otherwise).
	conf := fmt.Sprintf("\n# blockrep pgagent\nlisten_addresses = '*'\nport = %s\nrecovery_init_sync_method = syncfs\n", strconv.Itoa(r.PGPort))
	if err := appendFile(filepath.Join(r.PGData, "postgresql.conf"), conf); err != nil {
		return err
	}
	for name, text := range map[string]string{"pg_hba.conf": hbaConf, "pg_ident.conf": identConf} {
		f := filepath.Join(r.PGData, name)
		if err := os.WriteFile(f, []byte(fmt.Sprintf(text, r.PGUser)), 0o600); err != nil {
			return err
		}
		if err := os.Chown(f, r.uid, r.gid); err != nil {
			return err
		}
	}
	r.Logger.Info("pgagent: database cluster initialized", "pgdata", r.PGData, "superuser", r.PGUser)
	return nil
}

// blkidSignature names what blkid -o export found: "a ext4 filesystem",
// "a dos partition table", or "" for nothing.
func blkidSignature(export string) string {
	kv := map[string]string{}
	for _, l := range strings.Split(export, "\n") {
		if k, v, ok := strings.Cut(strings.TrimSpace(l), "="); ok {
			kv[k] = v
		}
	}
	switch {
	case kv["TYPE"] != "":
		return "a " + kv["TYPE"] + " filesystem"
	case kv["PTTYPE"] != "":
		return "a " + kv["PTTYPE"] + " partition table"
	case len(kv) > 0:
		return "a signature"
	}
	return ""
}

func appendFile(name, text string) error {
	f, err := os.OpenFile(name, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	_, err = f.WriteString(text)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}
