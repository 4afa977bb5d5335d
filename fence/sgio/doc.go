// Package sgio runs SCSI commands on a local Linux device through the SG_IO ioctl, so
// blockrep's fencing (fence/scsi) can place persistent reservations on a shared disk
// that the kernel sees: a SAN LUN through /dev/sdX or /dev/sgN, a kernel iSCSI or FC
// session, a multipath leg.
//
//	dev, err := sgio.Open("/dev/sdb")
//	if err != nil { ... }
//	defer dev.Close()
//	pr := scsi.NewPR(dev)
//	keys, err := pr.ReadKeys(ctx)
//
// Device implements scsi.Device. The ioctl cannot be interrupted, so a context only
// shortens the command timeout that the kernel enforces (Device.Timeout, default 30 s);
// an expired timeout makes the kernel abort the command and Execute return an error
// whose outcome is unknown.
//
// Errors the kernel reports outside the SCSI status (host byte: no connection, transport
// disrupted, nexus failure; driver byte: timeout) are returned as *HostError; the
// nexus failure the kernel uses for reservation conflicts on some paths wraps
// scsi.ErrReservationConflict.
package sgio
