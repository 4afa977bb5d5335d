package pgagent

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Gratuitous ARP as IPaddr2 sends it: 5 frames 200 ms apart.
const (
	garpCount    = 5
	garpInterval = 200 * time.Millisecond
)

// floatingIP adds the service address and announces it. It works on the
// calling goroutine's network namespace: netlink and packet sockets are
// opened on the calling thread and no goroutine is started.
type floatingIP struct {
	r   *resolved
	dev string // interface the address was added to
}

func (ip *floatingIP) addr() *netlink.Addr {
	p := ip.r.vip
	return &netlink.Addr{IPNet: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), 32)}}
}

// link finds the interface: the configured one, or the one already holding
// an address in the floating address's subnet.
func (ip *floatingIP) link() (netlink.Link, error) {
	if ip.r.vipDev != "" {
		l, err := netlink.LinkByName(ip.r.vipDev)
		if err != nil {
			return nil, fmt.Errorf("interface %s: %v", ip.r.vipDev, err)
		}
		return l, nil
	}
	links, err := netlink.LinkList()
	if err != nil {
		return nil, err
	}
	subnet := ip.r.vip.Masked()
	for _, l := range links {
		as, _ := netlink.AddrList(l, netlink.FAMILY_V4)
		for _, a := range as {
			if pa, ok := netip.AddrFromSlice(a.IP.To4()); ok && subnet.Contains(pa) && pa != ip.r.vip.Addr() {
				return l, nil
			}
		}
	}
	return nil, fmt.Errorf("no interface has an address in %s", subnet)
}

func (ip *floatingIP) up(ctx context.Context) error {
	l, err := ip.link()
	if err != nil {
		return err
	}
	if err := netlink.AddrAdd(l, ip.addr()); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("add %s to %s: %v", ip.r.vip, l.Attrs().Name, err)
	}
	ip.dev = l.Attrs().Name
	ip.r.Logger.Info("pgagent: floating address added", "address", ip.r.vip.String(), "dev", ip.dev)
	if err := sendGARP(ctx, l, ip.r.vip.Addr(), garpCount, garpInterval); err != nil {
		return fmt.Errorf("gratuitous arp on %s: %v", ip.dev, err)
	}
	ip.r.Logger.Info("pgagent: gratuitous arp sent", "address", ip.r.vip.Addr().String(), "dev", ip.dev, "count", garpCount)
	return nil
}

// down removes the address from every interface that holds it.
func (ip *floatingIP) down(ctx context.Context) error {
	links, err := netlink.LinkList()
	if err != nil {
		return err
	}
	for _, l := range links {
		as, _ := netlink.AddrList(l, netlink.FAMILY_V4)
		for _, a := range as {
			ones, _ := a.Mask.Size()
			if pa, ok := netip.AddrFromSlice(a.IP.To4()); ok && pa == ip.r.vip.Addr() && ones == ip.r.vip.Bits() {
				if err := netlink.AddrDel(l, ip.addr()); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
					return fmt.Errorf("remove %s from %s: %v", ip.r.vip, l.Attrs().Name, err)
				}
				ip.r.Logger.Info("pgagent: floating address removed", "address", ip.r.vip.String(), "dev", l.Attrs().Name)
			}
		}
	}
	ip.dev = ""
	return nil
}

// sendGARP broadcasts unsolicited ARP requests (sender and target IP both the
// address) on a raw packet socket, so peers and switches learn our MAC.
func sendGARP(ctx context.Context, l netlink.Link, addr netip.Addr, count int, interval time.Duration) error {
	mac := l.Attrs().HardwareAddr
	if len(mac) != 6 {
		return fmt.Errorf("interface %s has no ethernet address", l.Attrs().Name)
	}
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, int(htons(unix.ETH_P_ARP)))
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	bcast := [8]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
	sa := &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ARP), Ifindex: l.Attrs().Index, Halen: 6, Addr: bcast}
	frame := garpFrame(mac, addr)
	for i := 0; i < count; i++ {
		if i > 0 {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(interval):
			}
		}
		if err := unix.Sendto(fd, frame, 0, sa); err != nil {
			return err
		}
	}
	return nil
}

func garpFrame(mac net.HardwareAddr, addr netip.Addr) []byte {
	ip4 := addr.As4()
	f := make([]byte, 0, 42)
	f = append(f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff) // destination: broadcast
	f = append(f, mac...)
	f = binary.BigEndian.AppendUint16(f, unix.ETH_P_ARP)
	f = binary.BigEndian.AppendUint16(f, 1)      // hardware: ethernet
	f = binary.BigEndian.AppendUint16(f, 0x0800) // protocol: IPv4
	f = append(f, 6, 4)
	f = binary.BigEndian.AppendUint16(f, 1) // request
	f = append(f, mac...)
	f = append(f, ip4[:]...)
	f = append(f, 0, 0, 0, 0, 0, 0)
	f = append(f, ip4[:]...)
	return f
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }
