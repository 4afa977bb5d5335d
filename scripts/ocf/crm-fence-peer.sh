#!/bin/sh
#
# crm-fence-peer.sh — blockrep's fence-peer / unfence-peer handler for Pacemaker, in the
# manner of DRBD's crm-fence-peer.9.sh. As fence-peer it places a location constraint
# that keeps the promoted role of the resource's clone off every node but this one (the
# lost peer may not be promoted with data it does not have) and exits 4 ("peer
# outdated"); as unfence-peer (or with --unfence) it removes that constraint once the
# peer has resynced.
#
#   handlers {
#       fence-peer   "/usr/lib/blockrep/crm-fence-peer.sh";
#       unfence-peer "/usr/lib/blockrep/crm-fence-peer.sh --unfence";
#   }
#
# The clone is found by its primitive's drbd_resource parameter; BLOCKREP_CLONE
# overrides the search. CIB_file (Pacemaker's variable) makes it work on a CIB file.

res="${DRBD_RESOURCE:-${BLOCKREP_RESOURCE:-}}"
me="${BLOCKREP_NODE:-$(uname -n)}"
unfence=no
[ "${1:-}" = "--unfence" ] && unfence=yes
[ "${BLOCKREP_HANDLER:-}" = "unfence-peer" ] && unfence=yes

if [ -z "$res" ]; then
	echo "crm-fence-peer: DRBD_RESOURCE is not set (run as a blockrep handler)" >&2
	exit 1
fi

# find_clone prints the id of the clone whose primitive manages $res.
find_clone() {
	if [ -n "${BLOCKREP_CLONE:-}" ]; then
		echo "$BLOCKREP_CLONE"
		return 0
	fi
	cibadmin -Q -o resources 2>/dev/null | awk -v res="$res" '
		/<(clone|master)[ >]/ { if (match($0, /id="[^"]*"/)) clone = substr($0, RSTART + 4, RLENGTH - 5) }
		/<primitive / { prim = ($0 ~ /type="blockrep"/) }
		prim && /name="drbd_resource"/ && $0 ~ ("value=\"" res "\"") { print clone; exit }
	'
}

clone=$(find_clone)
if [ -z "$clone" ]; then
	echo "crm-fence-peer: no clone of an ocf:blockrep:blockrep primitive with drbd_resource=$res in the CIB" >&2
	exit 1
fi
id="blockrep-fence-by-handler-$res-$clone"

if [ "$unfence" = yes ]; then
	if cibadmin -Q -o constraints 2>/dev/null | grep -q "id=\"$id\""; then
		cibadmin -D -o constraints -X "<rsc_location id=\"$id\"/>" || exit 1
		echo "crm-fence-peer: removed constraint $id"
	fi
	exit 0
fi

constraint="<rsc_location rsc=\"$clone\" id=\"$id\"><rule role=\"Promoted\" score=\"-INFINITY\" id=\"$id-rule\"><expression attribute=\"#uname\" operation=\"ne\" value=\"$me\" id=\"$id-expr\"/></rule></rsc_location>"
if cibadmin -Q -o constraints 2>/dev/null | grep -q "id=\"$id\""; then
	cibadmin -R -o constraints -X "$constraint" || exit 1
else
	cibadmin -C -o constraints -X "$constraint" || exit 1
fi
echo "crm-fence-peer: placed constraint $id: the promoted role of $clone stays on $me"
exit 4
