// Package pgagent runs the PostgreSQL service stack of a node that is
// Primary of a replicated volume. It knows the volume only as an NBD URI
// (e.g. nbd+unix:///r0?socket=/run/blockrep/r0.nbd) and does not depend on
// the blockrep engine.
//
// The stack is four ordered steps, each under Config.StepTimeout with log
// lines (log/slog) on the way up and down:
//
//  1. device: where /sys/module/nbd exists, /dev/nbdN through go-nbd's
//     client (not tested: the development and CI machines have no nbd
//     module); otherwise nbdfuse exposes the export as RunDir/nbdfuse/nbd and
//     losetup --direct-io=off puts /dev/loopN on it. Status.Path says which.
//  2. filesystem: fsck -p (ext4; exit 0-3 accepted) then mount. XFS is not
//     checked: mount replays its log.
//  3. postgres: pg_ctl start as Config.PGUser with the unix socket in
//     RunDir/pg (log: RunDir/pg/postgres.log), then a pgx health check
//     through that socket: SELECT 1 and pg_is_in_recovery() = false.
//  4. ip (only if Config.Address is set): add the address with netlink and
//     send 5 gratuitous ARP requests 200 ms apart on a raw packet socket.
//
// Stop undoes them in reverse: remove the address, pg_ctl stop -m fast (then
// -m immediate, then SIGKILL), unmount (killing holders found in /proc with
// SIGTERM then SIGKILL when busy), losetup -d, unmount the FUSE dir and wait
// for nbdfuse to exit. Copies of the two mounts in other mount namespaces
// (made while they were mounted, e.g. by ip netns exec on a host whose / is
// not a shared mount) are unmounted there with nsenter: they would keep the
// filesystem alive, the loop device bound and nbdfuse running. Start first runs every down step as cleanup, so the
// leftovers of a crashed run of the same resource (running postgres, mount,
// loop device, nbdfuse and its FUSE mount) go before anything starts, and a
// stale postmaster.pid is removed even when its pid now belongs to an
// unrelated live process. Start on a running stack and Stop on a stopped one
// are no-ops. Failures are *StepError{Step, Err}. Check does not change the
// state; RestartPostgres needs a running stack (after it fails the stack is
// failed, and Stop then Start is the way back).
//
// On the nbdfuse path a PostgreSQL fsync reaches the NBD server as a flush
// (ext4 flush → loop → fsync of the FUSE file → NBD flush), so committed
// transactions survive the export vanishing under a running stack; the
// tests kill nbdfuse to check this.
//
// API:
//
//	s, err := pgagent.New(cfg)     // validates only; touches nothing
//	err = s.Start(ctx)             // cleanup, then device → filesystem → postgres → ip
//	err = s.Check(ctx)             // SQL health check
//	err = s.RestartPostgres(ctx)   // e.g. after the postmaster died
//	err = s.Stop(ctx)
//	st := s.Status()               // State, failed Step, Since, Path, Device
//	err = pgagent.InitDB(ctx, cfg, password, force) // blockrepadm pg-init
//
// InitDB refuses a device that already holds a filesystem or a partition
// table (any blkid -p signature) unless force, runs mkfs.ext4 -F or mkfs.xfs -f, mounts, creates PGData owned by
// PGUser, runs initdb with the superuser password from a temporary --pwfile,
// appends listen_addresses = '*' and port to postgresql.conf, checks that the
// server starts, and leaves everything stopped. Its *StepError steps are
// device, mkfs (also the refusal), filesystem, initdb and postgres. It
// writes this pg_hba.conf:
//
//	local   all       postgres  peer     map=blockrep
//	local   all       all                peer
//	host    all       all       all      scram-sha-256
//
// and this pg_ident.conf, so that the daemon, running as root, passes peer
// authentication as the superuser for the health check:
//
//	blockrep    root             postgres
//	blockrep    postgres         postgres
//
// Every directory above PGData and RunDir must be searchable by PGUser.
// PGData must be below MountPoint.
//
// Debian packages the stack and its tests need: postgresql-15 (or another
// major version given as PGBinDir), nbdfuse, nbdkit (tests only: it stands in
// for the blockrep daemon), e2fsprogs, xfsprogs, util-linux (losetup, fsck,
// blkid, nsenter; unshare in the tests), iproute2 (tests). fuse3 is not needed: nbdfuse runs as root and is unmounted with
// umount(2). The tests need root and skip otherwise.
package pgagent
