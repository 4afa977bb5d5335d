package pgagent

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"net/url"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Config describes one resource's PostgreSQL service stack.
type Config struct {
	Resource   string // resource name, used in log lines only
	NBDURI     string // the volume's NBD export, e.g. nbd+unix:///r0?socket=/run/blockrep/r0.nbd
	RunDir     string // this resource's own run directory (nbdfuse mount, PostgreSQL socket and log); two nodes on one host need different ones
	MountPoint string // where the filesystem is mounted
	FSType     string // "ext4" (default) or "xfs"
	PGBinDir   string // PostgreSQL binaries, e.g. /usr/lib/postgresql/15/bin
	PGData     string // data directory, inside MountPoint
	PGUser     string // OS user running PostgreSQL, also the superuser's name (default "postgres")
	PGPort     int    // port for TCP and the unix socket name (default 5432)
	// Address is the optional floating IP: "IP/PREFIX" (added to the interface that
	// already holds an address in that subnet) or "IP/PREFIX dev IFACE". IPv4 only.
	Address     string
	StepTimeout time.Duration // per step (default 60s)
	Logger      *slog.Logger  // default slog.Default()
}

// resolved is a validated Config plus what is derived from it.
type resolved struct {
	Config
	uid, gid   int
	groups     []uint32
	home       string
	vip        netip.Prefix // zero if no floating IP
	vipDev     string
	fuseDir    string // nbdfuse's FUSE mount dir; the export is fuseDir/nbd
	fusePID    string // nbdfuse's pid file
	nbdDevFile string // which /dev/nbdN the kernel path used (leftover cleanup)
	sockDir    string // PostgreSQL's unix socket dir, owned by PGUser
	pgLog      string
}

func (c Config) resolve() (*resolved, error) {
	r := &resolved{Config: c}
	if r.FSType == "" {
		r.FSType = "ext4"
	}
	if r.PGUser == "" {
		r.PGUser = "postgres"
	}
	if r.PGPort == 0 {
		r.PGPort = 5432
	}
	if r.StepTimeout <= 0 {
		r.StepTimeout = 60 * time.Second
	}
	if r.Logger == nil {
		r.Logger = slog.Default()
	}
	if r.Resource == "" {
		return nil, errors.New("pgagent: config: resource name is empty")
	}
	r.Logger = r.Logger.With("resource", r.Resource)
	if _, _, err := parseNBDURI(r.NBDURI); err != nil {
		return nil, fmt.Errorf("pgagent: config: %w", err)
	}
	if r.FSType != "ext4" && r.FSType != "xfs" {
		return nil, fmt.Errorf("pgagent: config: filesystem type %q is not ext4 or xfs", r.FSType)
	}
	for _, p := range []struct{ name, v string }{{"run dir", r.RunDir}, {"mount point", r.MountPoint}, {"pg data", r.PGData}, {"pg bin dir", r.PGBinDir}} {
		if !filepath.IsAbs(p.v) {
			return nil, fmt.Errorf("pgagent: config: %s %q is not an absolute path", p.name, p.v)
		}
	}
	r.RunDir, r.MountPoint, r.PGData = filepath.Clean(r.RunDir), filepath.Clean(r.MountPoint), filepath.Clean(r.PGData)
	rel, err := filepath.Rel(r.MountPoint, r.PGData)
	if err != nil || rel == "." || strings.HasPrefix(rel, "..") {
		return nil, fmt.Errorf("pgagent: config: pg data %s is not below mount point %s", r.PGData, r.MountPoint)
	}
	// Mount tables and /proc show real paths: resolve symlinks where the
	// directories exist already.
	if real, err := filepath.EvalSymlinks(r.MountPoint); err == nil {
		r.MountPoint, r.PGData = real, filepath.Join(real, rel)
	}
	if real, err := filepath.EvalSymlinks(r.RunDir); err == nil {
		r.RunDir = real
	}
	if r.Address != "" {
		if r.vip, r.vipDev, err = parseAddress(r.Address); err != nil {
			return nil, fmt.Errorf("pgagent: config: %w", err)
		}
	}
	for _, b := range []string{"postgres", "pg_ctl", "initdb"} {
		if fi, err := os.Stat(filepath.Join(r.PGBinDir, b)); err != nil || fi.IsDir() || fi.Mode()&0o111 == 0 {
			return nil, fmt.Errorf("pgagent: config: pg bin dir %s has no %s executable", r.PGBinDir, b)
		}
	}
	if r.PGPort < 1 || r.PGPort > 65535 {
		return nil, fmt.Errorf("pgagent: config: pg port %d out of range", r.PGPort)
	}
	u, err := user.Lookup(r.PGUser)
	if err != nil {
		return nil, fmt.Errorf("pgagent: config: pg user %q: %v", r.PGUser, err)
	}
	r.uid, _ = strconv.Atoi(u.Uid)
	r.gid, _ = strconv.Atoi(u.Gid)
	r.home = u.HomeDir
	if gids, err := u.GroupIds(); err == nil {
		for _, g := range gids {
			if n, err := strconv.Atoi(g); err == nil {
				r.groups = append(r.groups, uint32(n))
			}
		}
	}
	r.fuseDir = filepath.Join(r.RunDir, "nbdfuse")
	r.fusePID = filepath.Join(r.RunDir, "nbdfuse.pid")
	r.nbdDevFile = filepath.Join(r.RunDir, "nbd-device")
	r.sockDir = filepath.Join(r.RunDir, "pg")
	r.pgLog = filepath.Join(r.sockDir, "postgres.log")
	if strings.ContainsAny(r.RunDir, "'\\") {
		return nil, fmt.Errorf("pgagent: config: run dir %s contains a quote or backslash", r.RunDir)
	}
	// A unix socket path is limited to 107 bytes.
	if n := len(r.sockDir) + len("/.s.PGSQL.65535"); n > 107 {
		return nil, fmt.Errorf("pgagent: config: run dir %s too long for a unix socket path", r.RunDir)
	}
	return r, nil
}

// parseAddress parses "IP/PREFIX" or "IP/PREFIX dev IFACE".
func parseAddress(s string) (netip.Prefix, string, error) {
	f := strings.Fields(s)
	if len(f) != 1 && !(len(f) == 3 && f[1] == "dev") {
		return netip.Prefix{}, "", fmt.Errorf("address %q is not \"IP/PREFIX\" or \"IP/PREFIX dev IFACE\"", s)
	}
	p, err := netip.ParsePrefix(f[0])
	if err != nil {
		return netip.Prefix{}, "", fmt.Errorf("address %q: %v", s, err)
	}
	if !p.Addr().Is4() {
		return netip.Prefix{}, "", fmt.Errorf("address %q: only IPv4 floating addresses are supported", s)
	}
	dev := ""
	if len(f) == 3 {
		dev = f[2]
	}
	return p, dev, nil
}

// parseNBDURI returns the unix socket (or host:port, network "tcp") and export name.
func parseNBDURI(s string) (network, addr string, err error) {
	u, err := url.Parse(s)
	if err != nil {
		return "", "", fmt.Errorf("nbd uri %q: %v", s, err)
	}
	switch u.Scheme {
	case "nbd+unix":
		sock := u.Query().Get("socket")
		if sock == "" {
			return "", "", fmt.Errorf("nbd uri %q has no socket= parameter", s)
		}
		return "unix", sock, nil
	case "nbd":
		host := u.Host
		if u.Port() == "" {
			host += ":10809"
		}
		return "tcp", host, nil
	}
	return "", "", fmt.Errorf("nbd uri %q: scheme is not nbd+unix or nbd", s)
}

func exportName(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return ""
	}
	return strings.TrimPrefix(u.Path, "/")
}
