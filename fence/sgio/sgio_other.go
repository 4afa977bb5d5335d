//go:build !linux

package sgio

import (
	"context"
	"errors"
	"time"

	"github.com/blockrep/blockrep/fence/scsi"
)

// DefaultTimeout bounds a command when neither Device.Timeout nor the context says
// otherwise.
const DefaultTimeout = 30 * time.Second

// Device is unavailable outside Linux.
type Device struct {
	Timeout time.Duration
}

// Open fails: SG_IO is Linux only.
func Open(path string) (*Device, error) {
	return nil, errors.New("sgio: SG_IO is only available on Linux")
}

func (d *Device) Path() string { return "" }

func (d *Device) Execute(ctx context.Context, cdb []byte, dir scsi.Direction, data []byte) (scsi.Result, error) {
	return scsi.Result{}, errors.ErrUnsupported
}

func (d *Device) Close() error { return nil }
