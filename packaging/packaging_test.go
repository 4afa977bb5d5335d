// Package packaging holds what is installed on storage nodes besides the programs:
// systemd units, the init script, man pages, bash completion and the Debian package.
// Its tests drive "make install" and "make deb" and run what they install.
package packaging

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

var (
	dest    string // a DESTDIR install of the tree
	version string // what the Makefile stamps into the programs
)

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	tmp, err := os.MkdirTemp("", "blockrep-packaging")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(tmp)
	dest = filepath.Join(tmp, "root")
	out, err := exec.Command("make", "-C", "..", "-s", "install", "DESTDIR="+dest, "BIN="+filepath.Join(tmp, "bin")).CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "make install: %v\n%s", err, out)
		return 1
	}
	v, err := exec.Command("git", "describe", "--always", "--dirty").Output()
	if err != nil {
		fmt.Fprintf(os.Stderr, "git describe: %v\n", err)
		return 1
	}
	version = strings.TrimSpace(string(v))
	return m.Run()
}

// installed lists the files make install writes (relative to DESTDIR), OCF agent aside.
var installed = []string{
	"usr/sbin/blockrepd", "usr/sbin/blockrepadm", "usr/sbin/fence_blockrep",
	"lib/systemd/system/blockrepd.service", "lib/systemd/system/blockrep@.service",
	"etc/init.d/blockrep", "etc/default/blockrep", "etc/blockrep/example.res.example",
	"usr/share/man/man8/blockrepd.8", "usr/share/man/man8/blockrepadm.8",
	"usr/share/man/man8/fence_blockrep.8", "usr/share/man/man5/blockrep.res.5",
	"usr/share/bash-completion/completions/blockrepadm",
}

// optional lists the files make install writes only when the tree has their source.
func optional() []string {
	var o []string
	for src, dst := range map[string]string{
		"../scripts/ocf/blockrep":          "usr/lib/ocf/resource.d/blockrep/blockrep",
		"../scripts/ocf/crm-fence-peer.sh": "usr/lib/blockrep/crm-fence-peer.sh",
	} {
		if _, err := os.Stat(src); err == nil {
			o = append(o, dst)
		}
	}
	return o
}

func TestInstall(t *testing.T) {
	var got []string
	filepath.Walk(dest, func(p string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() {
			rel, _ := filepath.Rel(dest, p)
			got = append(got, rel)
		}
		return nil
	})
	want := append(slices.Clone(installed), optional()...)
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("make install wrote\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	for _, p := range append([]string{"usr/sbin/blockrepd", "etc/init.d/blockrep"}, optional()...) {
		if fi, err := os.Stat(filepath.Join(dest, p)); err != nil || fi.Mode().Perm() != 0o755 {
			t.Errorf("%s: %v, want mode 0755", p, err)
		}
	}
}

func TestVersion(t *testing.T) {
	for _, prog := range []string{"blockrepadm", "blockrepd"} {
		out, err := exec.Command(filepath.Join(dest, "usr/sbin", prog), "--version").CombinedOutput()
		if want := prog + " version " + version + "\n"; err != nil || string(out) != want {
			t.Errorf("%s --version: %q, %v; want %q", prog, out, err, want)
		}
	}
}

func TestSystemdUnits(t *testing.T) {
	if _, err := exec.LookPath("systemd-analyze"); err != nil {
		t.Skip("no systemd-analyze")
	}
	// verify checks that ExecStart programs exist, at their installed paths: point the
	// units at the DESTDIR's, and man at its man pages (Documentation=).
	units := t.TempDir()
	var paths []string
	for _, u := range []string{"blockrepd.service", "blockrep@.service"} {
		b, err := os.ReadFile(filepath.Join(dest, "lib/systemd/system", u))
		if err != nil {
			t.Fatal(err)
		}
		s := strings.ReplaceAll(string(b), "/usr/sbin/", filepath.Join(dest, "usr/sbin")+"/")
		p := filepath.Join(units, u)
		if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
		paths = append(paths, p)
	}
	cmd := exec.Command("systemd-analyze", append([]string{"verify"}, paths...)...)
	cmd.Env = append(os.Environ(), "MANPATH="+filepath.Join(dest, "usr/share/man"))
	if out, err := cmd.CombinedOutput(); err != nil || len(out) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
	d, _ := os.ReadFile(filepath.Join(dest, "lib/systemd/system/blockrepd.service"))
	for _, want := range []string{"\nType=notify\n", "\nAfter=network-online.target\n", "\nWants=network-online.target\n"} {
		if !strings.Contains(string(d), want) {
			t.Errorf("blockrepd.service lacks %q", strings.TrimSpace(want))
		}
	}
	if !strings.Contains(string(d), "\nExecReload=/usr/sbin/blockrepadm ") || !strings.Contains(string(d), " adjust all\n") {
		t.Error("blockrepd.service's reload is not blockrepadm adjust all")
	}
}

// TestSdNotify runs blockrepd as systemd would with Type=notify: READY=1 once the
// control socket answers, STOPPING=1 on SIGTERM. The notify socket is abstract, as
// systemd's is.
func TestSdNotify(t *testing.T) {
	name := fmt.Sprintf("@blockrep-test-notify-%d", os.Getpid())
	ln, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	dir := t.TempDir()
	run := filepath.Join(dir, "run")
	cmd := exec.Command(filepath.Join(dest, "usr/sbin/blockrepd"), "--config", dir, "--run-dir", run, "--node", "alpha")
	cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+name)
	var log bytes.Buffer
	cmd.Stderr = &log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	recv := func() string {
		ln.SetReadDeadline(time.Now().Add(10 * time.Second))
		buf := make([]byte, 256)
		n, err := ln.Read(buf)
		if err != nil {
			t.Fatalf("no notification: %v\n%s", err, log.String())
		}
		return string(buf[:n])
	}
	if got := recv(); got != "READY=1" {
		t.Fatalf("first notification %q, want READY=1", got)
	}
	if out, err := exec.Command(filepath.Join(dest, "usr/sbin/blockrepadm"), "--run-dir", run, "status", "all").CombinedOutput(); err != nil {
		t.Fatalf("control socket does not answer after READY=1: %v\n%s", err, out)
	}
	cmd.Process.Signal(syscall.SIGTERM)
	if got := recv(); got != "STOPPING=1" {
		t.Fatalf("notification after SIGTERM %q, want STOPPING=1", got)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("blockrepd: %v\n%s", err, log.String())
	}
}

func freePort(t *testing.T) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// TestInitScript runs the installed init script against a two-node resource of which
// only this node (alpha) runs, with every path in a temp dir through its defaults file.
func TestInitScript(t *testing.T) {
	dir := t.TempDir()
	cfg, run := filepath.Join(dir, "etc"), filepath.Join(dir, "run")
	if err := os.Mkdir(cfg, 0o755); err != nil {
		t.Fatal(err)
	}
	disk := filepath.Join(dir, "disk0")
	if err := os.WriteFile(disk, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(disk, 64<<20); err != nil {
		t.Fatal(err)
	}
	res := fmt.Sprintf(`resource r0 {
    on alpha { node-id 0; address 127.0.0.1:%d; disk %s; meta-disk internal; }
    on beta  { node-id 1; address 127.0.0.1:%d; disk %s/disk1; meta-disk internal; }
}
`, freePort(t), disk, freePort(t), dir)
	if err := os.WriteFile(filepath.Join(cfg, "r0.res"), []byte(res), 0o644); err != nil {
		t.Fatal(err)
	}
	sbin := filepath.Join(dest, "usr/sbin")
	adm := func(args ...string) (string, error) {
		out, err := exec.Command(filepath.Join(sbin, "blockrepadm"), append([]string{"--config", cfg, "--run-dir", run, "--node", "alpha"}, args...)...).CombinedOutput()
		return string(out), err
	}
	if out, err := adm("create-md", "r0"); err != nil {
		t.Fatalf("create-md: %v\n%s", err, out)
	}
	defaults := filepath.Join(dir, "default")
	pidfile := filepath.Join(run, "blockrepd.pid")
	logfile := filepath.Join(dir, "log", "blockrepd.log")
	err := os.WriteFile(defaults, []byte(fmt.Sprintf(`BLOCKREPD=%s/blockrepd
BLOCKREPADM=%s/blockrepadm
BLOCKREP_CONFIG=%s
BLOCKREP_RUN_DIR=%s
BLOCKREP_NODE=alpha
BLOCKREP_LOG=%s
BLOCKREP_STOP_TIMEOUT=30
`, sbin, sbin, cfg, run, logfile)), 0o644)
	if err != nil {
		t.Fatal(err)
	}
	script := func(action string, want int) string {
		t.Helper()
		cmd := exec.Command(filepath.Join(dest, "etc/init.d/blockrep"), action)
		cmd.Env = append(os.Environ(), "BLOCKREP_DEFAULTS="+defaults)
		out, err := cmd.CombinedOutput()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatalf("%s: %v", action, err)
		}
		if code != want {
			log, _ := os.ReadFile(logfile)
			t.Fatalf("init script %s: exit %d, want %d\n%s\nblockrepd log:\n%s", action, code, want, out, log)
		}
		return string(out)
	}
	pid := func() int {
		var p int
		b, err := os.ReadFile(pidfile)
		if err == nil {
			fmt.Sscan(string(b), &p)
		}
		return p
	}
	t.Cleanup(func() {
		if p := pid(); p > 0 {
			syscall.Kill(p, syscall.SIGKILL)
		}
	})

	script("status", 3)
	script("stop", 0) // stopped already
	script("start", 0)
	p := pid()
	if p == 0 || syscall.Kill(p, 0) != nil {
		t.Fatalf("no running blockrepd in %s after start", pidfile)
	}
	if out, err := adm("status", "r0"); err != nil || !strings.HasPrefix(out, "r0 ") {
		t.Fatalf("r0 not up after start: %v\n%s", err, out)
	}
	script("status", 0)
	if out := script("start", 0); !strings.Contains(out, "already running") || pid() != p {
		t.Fatalf("start on a running daemon: %q (pid %d, was %d)", out, pid(), p)
	}
	script("reload", 3)

	script("restart", 0)
	if pid() == p || pid() == 0 {
		t.Fatalf("restart left pid %d (was %d)", pid(), p)
	}
	p = pid()

	script("stop", 0)
	if syscall.Kill(p, 0) == nil {
		t.Fatalf("blockrepd (pid %d) still runs after stop", p)
	}
	if _, err := os.Stat(pidfile); !os.IsNotExist(err) {
		t.Fatalf("pid file left after stop: %v", err)
	}
	if log, _ := os.ReadFile(logfile); !strings.Contains(string(log), "blockrepd stopped") {
		t.Fatalf("blockrepd did not stop cleanly:\n%s", log)
	}
	script("status", 3)

	// A daemon that died leaves its pid file: status 1; stop cleans up; start works.
	script("start", 0)
	p = pid()
	syscall.Kill(p, syscall.SIGKILL)
	for syscall.Kill(p, 0) == nil {
		time.Sleep(10 * time.Millisecond)
	}
	script("status", 1)
	script("stop", 0)
	script("status", 3)
	script("force-reload", 0)
	if out, err := adm("status", "r0"); err != nil || !strings.HasPrefix(out, "r0 ") {
		t.Fatalf("r0 not up after force-reload: %v\n%s", err, out)
	}
	script("stop", 0)
	script("bogus", 2)

	// A daemon that cannot start fails start at once, without a pid file.
	good, _ := os.ReadFile(defaults)
	if err := os.WriteFile(defaults, append(slices.Clone(good), "BLOCKREPD_OPTS=--no-such-flag\n"...), 0o644); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	if out := script("start", 1); !strings.Contains(out, "exited at start") || time.Since(t0) > 10*time.Second {
		t.Fatalf("start of a failing blockrepd took %v: %q", time.Since(t0), out)
	}
	script("status", 3)
	if err := os.WriteFile(defaults, good, 0o644); err != nil {
		t.Fatal(err)
	}

	// A daemon the script did not start is not taken over.
	other := exec.Command(filepath.Join(sbin, "blockrepd"), "--config", cfg, "--run-dir", run, "--node", "alpha")
	if err := other.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		other.Process.Signal(syscall.SIGTERM)
		other.Wait()
	}()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if _, err := adm("status", "all"); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the foreign blockrepd does not answer")
		}
	}
	if out := script("start", 1); !strings.Contains(out, "did not start") {
		t.Fatalf("start next to a foreign blockrepd: %q", out)
	}
	script("status", 3)
}

func TestManPages(t *testing.T) {
	if _, err := exec.LookPath("groff"); err != nil {
		t.Skip("no groff (groff-base)")
	}
	pages, _ := filepath.Glob(filepath.Join(dest, "usr/share/man/man*/*"))
	if len(pages) != 4 {
		t.Fatalf("man pages %v, want 4", pages)
	}
	for _, p := range pages {
		cmd := exec.Command("groff", "-man", "-Tutf8", "-ww", "-z", p)
		if out, err := cmd.CombinedOutput(); err != nil || len(out) > 0 {
			t.Errorf("groff %s: %v\n%s", filepath.Base(p), err, out)
		}
		if _, err := exec.LookPath("man"); err == nil {
			cmd := exec.Command("man", "--warnings", "-l", p)
			cmd.Env = append(os.Environ(), "MANWIDTH=80")
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			out, err := cmd.Output()
			if err != nil || stderr.Len() > 0 || !bytes.Contains(out, []byte("NAME")) {
				t.Errorf("man -l %s: %v\n%s", filepath.Base(p), err, stderr.String())
			}
		}
	}
	// blockrepadm(8) comes from the CLI: every verb is in it.
	b, _ := os.ReadFile(filepath.Join(dest, "usr/share/man/man8/blockrepadm.8"))
	for _, verb := range []string{"create-md", "up", "down", "primary", "status", "events", "switchover"} {
		if !regexp.MustCompile(`(?m)^(\.S[HS] )?` + regexp.QuoteMeta(verb) + `$`).Match(b) {
			t.Errorf("blockrepadm.8 lacks verb %s", verb)
		}
	}
}

func TestBashCompletion(t *testing.T) {
	if _, err := exec.LookPath("bash"); err != nil {
		t.Skip("no bash")
	}
	cfg := t.TempDir()
	for _, r := range []string{"db", "web"} {
		res := fmt.Sprintf("resource %s {\n on alpha { node-id 0; address 127.0.0.1:7789; disk /dev/%s0; meta-disk internal; }\n on beta { node-id 1; address 127.0.0.2:7789; disk /dev/%s1; meta-disk internal; }\n}\n", r, r, r)
		if err := os.WriteFile(filepath.Join(cfg, r+".res"), []byte(res), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	complete := func(words ...string) string {
		t.Helper()
		script := fmt.Sprintf(`source %q
COMP_WORDS=(%s); COMP_CWORD=$((${#COMP_WORDS[@]} - 1)); COMPREPLY=()
_blockrepadm
echo "${COMPREPLY[*]}"`, filepath.Join(dest, "usr/share/bash-completion/completions/blockrepadm"), quoteWords(words))
		cmd := exec.Command("bash", "--norc", "--noprofile", "-c", script)
		cmd.Env = append(os.Environ(), "PATH="+filepath.Join(dest, "usr/sbin")+":"+os.Getenv("PATH"))
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("completion of %q: %v\n%s", words, err, out)
		}
		return strings.TrimSpace(string(out))
	}
	if got := complete("blockrepadm", ""); !strings.Contains(got, "create-md up down") || !strings.Contains(got, "switchover") {
		t.Errorf("verbs: %q", got)
	}
	if got := complete("blockrepadm", "sw"); got != "switchover" {
		t.Errorf("sw: %q", got)
	}
	if got := complete("blockrepadm", "--config", cfg, "--node", "alpha", "up", ""); got != "all db web" {
		t.Errorf("resources: %q, want \"all db web\"", got)
	}
	if got := complete("blockrepadm", "--config="+cfg, "status", "w"); got != "web" {
		t.Errorf("resources with --config=: %q", got)
	}
	if got := complete("blockrepadm", "down", "--f"); got != "--force" {
		t.Errorf("down flags: %q", got)
	}
	// A configuration that does not load still offers its file names.
	if err := os.WriteFile(filepath.Join(cfg, "broken.res"), []byte("resource {"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got := complete("blockrepadm", "--config", cfg, "up", ""); got != "all broken db web" {
		t.Errorf("resources of a broken configuration: %q", got)
	}
}

func quoteWords(ws []string) string {
	q := make([]string, len(ws))
	for i, w := range ws {
		q[i] = "'" + strings.ReplaceAll(w, "'", `'\''`) + "'"
	}
	return strings.Join(q, " ")
}

func TestShellcheck(t *testing.T) {
	if _, err := exec.LookPath("shellcheck"); err != nil {
		t.Skip("no shellcheck")
	}
	for _, c := range [][]string{
		{"-s", "sh", "init.d/blockrep", "deb/postinst", "deb/prerm", "deb/postrm", "default/blockrep"},
		{"-s", "bash", "bash-completion/blockrepadm"},
	} {
		if out, err := exec.Command("shellcheck", c...).CombinedOutput(); err != nil {
			t.Errorf("shellcheck %v: %v\n%s", c, err, out)
		}
	}
}

func TestDeb(t *testing.T) {
	if _, err := exec.LookPath("dpkg-deb"); err != nil {
		t.Skip("no dpkg-deb")
	}
	bin := t.TempDir()
	// gzip: xz takes most of a minute on a small machine.
	if out, err := exec.Command("make", "-C", "..", "-s", "deb", "BIN="+bin, "DEB_COMPRESS=gzip").CombinedOutput(); err != nil {
		t.Fatalf("make deb: %v\n%s", err, out)
	}
	debs, _ := filepath.Glob(filepath.Join(bin, "*.deb"))
	if len(debs) != 1 {
		t.Fatalf("make deb made %v", debs)
	}
	deb := debs[0]
	arch, err := exec.Command("dpkg", "--print-architecture").Output()
	if err != nil {
		t.Fatal(err)
	}
	field := func(name string) string {
		out, err := exec.Command("dpkg-deb", "--field", deb, name).Output()
		if err != nil {
			t.Fatalf("dpkg-deb --field %s: %v", name, err)
		}
		return strings.TrimSpace(string(out))
	}
	if got := field("Package"); got != "blockrep" {
		t.Errorf("Package: %q", got)
	}
	if got := field("Architecture"); got != strings.TrimSpace(string(arch)) {
		t.Errorf("Architecture: %q, want %q", got, arch)
	}
	v := field("Version")
	if !regexp.MustCompile(`^[0-9][A-Za-z0-9.+~]*$`).MatchString(v) {
		t.Errorf("Version %q is not a Debian version without revision", v)
	}
	if err := exec.Command("dpkg", "--compare-versions", v, "gt", "0~").Run(); err != nil {
		t.Errorf("dpkg rejects version %q: %v", v, err)
	}
	if filepath.Base(deb) != "blockrep_"+v+"_"+field("Architecture")+".deb" {
		t.Errorf("file name %s", filepath.Base(deb))
	}
	for _, f := range []string{"Depends", "Recommends", "Maintainer", "Description", "Installed-Size"} {
		if field(f) == "" {
			t.Errorf("no %s field", f)
		}
	}
	if got := field("Depends"); !strings.Contains(got, "nbdfuse") {
		t.Errorf("Depends: %q", got)
	}
	if got := field("Recommends"); !strings.Contains(got, "postgresql-15") {
		t.Errorf("Recommends: %q", got)
	}

	out, err := exec.Command("dpkg-deb", "--contents", deb).Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range append(slices.Clone(installed), optional()...) {
		if strings.HasPrefix(p, "usr/share/man/") {
			p += ".gz"
		}
		if !strings.Contains(string(out), " ./"+p+"\n") {
			t.Errorf("the package lacks %s", p)
		}
	}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if !strings.Contains(line, " root/root ") {
			t.Errorf("not owned by root: %s", line)
		}
	}

	ctl := t.TempDir()
	if out, err := exec.Command("dpkg-deb", "--control", deb, ctl).CombinedOutput(); err != nil {
		t.Fatalf("dpkg-deb --control: %v\n%s", err, out)
	}
	conf, _ := os.ReadFile(filepath.Join(ctl, "conffiles"))
	want := "/etc/blockrep/example.res.example\n/etc/default/blockrep\n/etc/init.d/blockrep\n"
	if string(conf) != want {
		t.Errorf("conffiles %q, want %q", conf, want)
	}
	// The maintainer scripts reload systemd and nothing else: no unit is enabled or
	// started, no resource taken up or down.
	bad := regexp.MustCompile(`systemctl +(start|stop|restart|enable|disable|try-restart)|update-rc\.d|invoke-rc\.d|deb-systemd|blockrepadm|init\.d/blockrep`)
	for _, s := range []string{"postinst", "prerm", "postrm"} {
		b, err := os.ReadFile(filepath.Join(ctl, s))
		if err != nil {
			t.Fatal(err)
		}
		if m := bad.Find(b); m != nil {
			t.Errorf("%s runs %q", s, m)
		}
		if !strings.Contains(string(b), "systemctl daemon-reload") {
			t.Errorf("%s does not reload systemd", s)
		}
	}

	root := t.TempDir()
	if out, err := exec.Command("dpkg", "-x", deb, root).CombinedOutput(); err != nil {
		t.Fatalf("dpkg -x: %v\n%s", err, out)
	}
	for _, prog := range []string{"blockrepadm", "blockrepd"} {
		out, err := exec.Command(filepath.Join(root, "usr/sbin", prog), "--version").CombinedOutput()
		if want := prog + " version " + version + "\n"; err != nil || string(out) != want {
			t.Errorf("installed %s --version: %q, %v; want %q", prog, out, err, want)
		}
	}
}
