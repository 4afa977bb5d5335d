package nbd

import (
	"bytes"
	"context"
	"errors"
	"net"
	"path/filepath"
	"sync"
	"testing"

	"github.com/blockrep/blockrep/blockrep"
)

func TestClientPipelinesAgainstTheServer(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "s")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	dev := blockrep.NewMemDevice(4 << 20)
	srv := &Server{Lookup: func(name string) (*Export, error) {
		if name != "x" {
			return nil, ErrUnknownExport
		}
		return &Export{Name: "x", Backend: blockrep.DeviceBackend{Dev: dev}}, nil
	}}
	go srv.Serve(ln)
	defer srv.Close()

	if _, err := Dial(context.Background(), "unix", sock, "nope"); err == nil {
		t.Fatal("attached to an unknown export")
	}
	c, err := Dial(context.Background(), "unix", sock, "x")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if c.Size() != 4<<20 {
		t.Fatalf("size %d", c.Size())
	}
	var wg sync.WaitGroup
	for g := 0; g < 16; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			data := bytes.Repeat([]byte{byte(g + 1)}, 4096)
			for i := 0; i < 20; i++ {
				off := int64(g*64+i) * 4096
				if err := c.WriteAt(data, off, i%5 == 0); err != nil {
					t.Error(err)
					return
				}
				got := make([]byte, 4096)
				if err := c.ReadAt(got, off); err != nil || !bytes.Equal(got, data) {
					t.Errorf("read back at %d: %v", off, err)
					return
				}
			}
		}(g)
	}
	wg.Wait()
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := c.Trim(0, 4096); err != nil {
		t.Fatal(err)
	}
	if err := c.ReadAt(make([]byte, 4096), 4<<20); err == nil {
		t.Fatal("read past the end succeeded")
	}
	srv.Close()
	if err := c.Flush(); !errors.Is(err, ErrClientClosed) {
		t.Fatalf("flush after the server closed: %v, want ErrClientClosed", err)
	}
}
