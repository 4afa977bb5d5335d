package pgagent

import (
	"encoding/binary"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// TestFloatingIP runs the ip step in a network namespace of its own: a veth
// pair, 198.18.0.1/24 on our end and 198.18.0.2/24 on the peer in a second
// namespace, where a raw socket captures the gratuitous ARPs.
func TestFloatingIP(t *testing.T) {
	needRoot(t)
	// The namespaces belong to this thread only. It is never unlocked, so
	// Go discards it when the test ends, whatever namespace it is in.
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	defer func() { _ = netns.Set(orig) }()
	peerNS, err := netns.New()
	if err != nil {
		t.Skipf("cannot create a network namespace: %v", err)
	}
	defer peerNS.Close()
	ourNS, err := netns.New()
	if err != nil {
		t.Fatal(err)
	}
	defer ourNS.Close()

	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "pga0"}, PeerName: "pga1"}))
	ours, err := netlink.LinkByName("pga0")
	must(err)
	peer, err := netlink.LinkByName("pga1")
	must(err)
	must(netlink.LinkSetNsFd(peer, int(peerNS)))
	must(netlink.AddrAdd(ours, mustAddr(t, "198.18.0.1/24")))
	must(netlink.LinkSetUp(ours))
	ph, err := netlink.NewHandleAt(peerNS)
	must(err)
	defer ph.Close()
	peer, err = ph.LinkByName("pga1")
	must(err)
	must(ph.AddrAdd(peer, mustAddr(t, "198.18.0.2/24")))
	must(ph.LinkSetUp(peer))

	// The capture socket lives in the peer's namespace.
	must(netns.Set(peerNS))
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, int(htons(unix.ETH_P_ARP)))
	must(netns.Set(ourNS))
	must(err)
	defer unix.Close(fd)
	must(unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ARP), Ifindex: peer.Attrs().Index}))
	must(unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Usec: 200000}))

	ours, err = netlink.LinkByName("pga0") // now up, with its MAC
	must(err)
	ctx := ctxT(t, 30*time.Second)
	log := slog.New(slog.NewTextHandler(testWriter{t}, nil))
	vip := newTestIP(t, "198.18.0.10/24", log)
	t0 := time.Now()
	if err := vip.up(ctx); err != nil {
		t.Fatalf("up: %v", err)
	}
	if d := time.Since(t0); d < 4*garpInterval {
		t.Errorf("up took %v: gratuitous ARPs not spaced %v apart", d, garpInterval)
	}
	if vip.dev != "pga0" {
		t.Errorf("address added to %q, want pga0 (the interface in 198.18.0.0/24)", vip.dev)
	}
	if !hasAddr(t, ours, "198.18.0.10/24") {
		t.Fatal("198.18.0.10/24 not on pga0 after up")
	}
	if n := captureGARP(t, fd, ours.Attrs().HardwareAddr, netip.MustParseAddr("198.18.0.10")); n != garpCount {
		t.Errorf("captured %d gratuitous ARPs on the peer, want %d", n, garpCount)
	}
	if err := vip.up(ctx); err != nil {
		t.Fatalf("second up: %v", err)
	}
	if err := vip.down(ctx); err != nil {
		t.Fatalf("down: %v", err)
	}
	if hasAddr(t, ours, "198.18.0.10/24") {
		t.Fatal("198.18.0.10/24 still on pga0 after down")
	}
	if err := vip.down(ctx); err != nil {
		t.Fatalf("second down: %v", err)
	}

	// An explicit interface, and a subnet no interface is in.
	dev := newTestIP(t, "198.18.0.11/32 dev pga0", log)
	if err := dev.up(ctx); err != nil || !hasAddr(t, ours, "198.18.0.11/32") {
		t.Fatalf("up with dev: %v", err)
	}
	must(dev.down(ctx))
	none := newTestIP(t, "203.0.113.5/24", log)
	if err := none.up(ctx); err == nil || !strings.Contains(err.Error(), "no interface has an address in 203.0.113.0/24") {
		t.Fatalf("up in a subnet no interface is in: %v", err)
	}
}

func newTestIP(t *testing.T, addr string, log *slog.Logger) *floatingIP {
	p, dev, err := parseAddress(addr)
	if err != nil {
		t.Fatal(err)
	}
	return &floatingIP{r: &resolved{Config: Config{Logger: log}, vip: p, vipDev: dev}}
}

func mustAddr(t *testing.T, s string) *netlink.Addr {
	a, err := netlink.ParseAddr(s)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func hasAddr(t *testing.T, l netlink.Link, s string) bool {
	as, err := netlink.AddrList(l, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range as {
		if a.IPNet.String() == s {
			return true
		}
	}
	return false
}

// captureGARP counts the ARP requests from mac announcing ip (sender and
// target both ip) that arrive until the line is quiet for a second.
func captureGARP(t *testing.T, fd int, mac net.HardwareAddr, ip netip.Addr) int {
	n := 0
	buf := make([]byte, 1500)
	quiet := time.Now().Add(time.Second)
	for time.Now().Before(quiet) {
		m, _, err := unix.Recvfrom(fd, buf, 0)
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			t.Fatalf("capture: %v", err)
		}
		f := buf[:m]
		if len(f) < 42 || binary.BigEndian.Uint16(f[12:]) != unix.ETH_P_ARP || binary.BigEndian.Uint16(f[20:]) != 1 {
			continue
		}
		ip4 := ip.As4()
		if net.HardwareAddr(f[22:28]).String() == mac.String() && string(f[28:32]) == string(ip4[:]) && string(f[38:42]) == string(ip4[:]) {
			n++
			quiet = time.Now().Add(time.Second)
		}
	}
	return n
}
