#!/bin/sh
# Example notify command for hapd (`notify = ["/etc/hapd/notify.sh"]` in a [[vrrp]] section).
#
# hapd runs it on every state change, without a shell, with three arguments appended:
#   $1 the new state (MASTER, BACKUP, FAULT, STOP)
#   $2 the instance name (VI_1)
#   $3 the previous state
# It runs with no stdin, after the change has been made (the VIP is already added or removed);
# hapd waits for it at most 30 s (then kills it) and runs the next one after it, in order.
#
# For a webhook, `notify_webhook = "https://..."` in the same section does the POST itself
# ({host, instance, state, time} as JSON) without a script.
set -eu

state=${1:?state} instance=${2:?instance} previous=${3:-UNKNOWN}
host=$(hostname -s)

msg="VRRP $instance on $host: $previous -> $state"
# To syslog when there is one, else to hapd's log (stderr is logged by hapd).
logger -t hapd-notify "$msg" 2>/dev/null || echo "$msg" >&2

case "$state" in
MASTER)
	# This node now holds the VIP: warm caches, page someone, etc.
	;;
BACKUP | FAULT | STOP)
	;;
esac
