package resource

import (
	"log/slog"
	"net"
	"os"
)

// Version is the blockrep version, set at build time with
// -ldflags "-X github.com/blockrep/blockrep/resource.Version=…".
var Version = "unknown"

// sdNotify sends a state line ("READY=1", "STOPPING=1") to systemd when it started us
// with Type=notify: one datagram to $NOTIFY_SOCKET. Without that variable it does
// nothing. A leading '@' names an abstract socket; the net package maps it.
func sdNotify(log *slog.Logger, state string) {
	path := os.Getenv("NOTIFY_SOCKET")
	if path == "" {
		return
	}
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: path, Net: "unixgram"})
	if err == nil {
		_, err = c.Write([]byte(state))
		c.Close()
	}
	if err != nil {
		log.Warn("cannot notify systemd", "state", state, "err", err)
	}
}
