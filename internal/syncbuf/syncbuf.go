// Package syncbuf is a bytes.Buffer that several goroutines may write while another
// reads it: tests collect a logger's or a child process's output in one.
package syncbuf

import (
	"bytes"
	"sync"
)

type Buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *Buffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *Buffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
