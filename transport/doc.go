// Package transport is blockrep's peer link: authenticated, framed messages over TCP.
//
// A connection starts with a hello exchange in which both sides prove knowledge of the
// resource's shared secret (HMAC challenge-response, bound to both nonces, both node
// ids and the resource name), then carries typed messages: a 12-byte header (magic,
// type, payload length) and a payload whose layout the type defines. Decoders check
// every length against the payload they were given, so a malformed or hostile peer
// produces an error, never a panic or an oversized allocation.
//
// The package knows nothing of replication semantics: the engine (package blockrep)
// decides what messages mean. One goroutine reads a Conn; any number may write, each
// message under the Conn's write lock, batched in a buffer until Flush.
package transport
