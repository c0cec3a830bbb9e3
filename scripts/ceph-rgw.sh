#!/usr/bin/env bash
# A one-node Ceph cluster with the RADOS Gateway (S3) from Debian's packages, for trying
# blockvault's S3 backend and for the end-to-end bench. No systemd, no cephadm: one monitor,
# one OSD (memstore, in RAM; STORE=bluestore for a sparse file) and radosgw, all under DIR,
# listening on 127.0.0.1 only. Root. Starts in a few seconds once the packages are installed.
#
#   bash scripts/ceph-rgw.sh start DIR [BUCKET]   # installs packages if missing, starts, makes BUCKET
#   OBJECT_LOCK=1 bash scripts/ceph-rgw.sh start DIR BUCKET   # BUCKET with S3 Object Lock
#   bash scripts/ceph-rgw.sh stop DIR             # stops the daemons (by PID) and removes DIR
#
# `start` writes DIR/credentials (mode 0600, for --credentials-file / [store] credentials_file)
# and prints the endpoint. PORT (default 7480) sets the gateway's port, MON_PORT (default 3300)
# the monitor's.
set -euo pipefail
cmd=${1:?usage: ceph-rgw.sh start|stop DIR [BUCKET]}
D=${2:?usage: ceph-rgw.sh start|stop DIR [BUCKET]}
BUCKET=${3:-blockvault}
PORT=${PORT:-7480}
MON_PORT=${MON_PORT:-3300}
STORE=${STORE:-memstore}
AK=BLOCKVAULTTESTKEY
SK=blockvault-test-secret-key-0001

down() {
  for n in rgw osd mon; do
    [ -f "$D/run/pid.$n" ] || continue
    p=$(cat "$D/run/pid.$n")
    kill -TERM "$p" 2>/dev/null || continue
    for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$p" 2>/dev/null && kill -KILL "$p"
  done
  return 0
}

if [ "$cmd" = stop ]; then
  down
  rm -rf "$D"
  exit 0
fi
[ "$cmd" = start ] || { echo "usage: ceph-rgw.sh start|stop DIR [BUCKET]" >&2; exit 2; }

need=()
for b in ceph-mon ceph-osd radosgw ceph s3cmd; do command -v "$b" >/dev/null || need+=("$b"); done
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
    --no-install-recommends ceph-mon ceph-osd radosgw ceph-common s3cmd >/dev/null
fi

rm -rf "$D"; mkdir -p "$D"/{mon,osd,run,log,rgw}
FSID=$(cat /proc/sys/kernel/random/uuid)
export CEPH_CONF=$D/ceph.conf
cat > "$CEPH_CONF" <<CONF
[global]
fsid = $FSID
mon host = v2:127.0.0.1:$MON_PORT
mon initial members = a
public network = 127.0.0.0/8
public addr = 127.0.0.1
cluster addr = 127.0.0.1
ms bind ipv6 = false
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
run dir = $D/run
admin socket = $D/run/\$name.asok
pid file = $D/run/\$name.pid
log file = $D/log/\$name.log
mon data = $D/mon/\$cluster-\$id
osd data = $D/osd/\$cluster-\$id
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon max pg per osd = 1000
mon warn on pool no redundancy = false
mon data avail warn = 5
auth allow insecure global id reclaim = false
paxos propose interval = 0.1
[client]
keyring = $D/\$name.keyring
[osd]
keyring = $D/\$name.keyring
osd objectstore = $STORE
memstore device bytes = 8589934592
bluestore block create = true
bluestore block size = 10737418240
[client.rgw.a]
rgw frontends = beast endpoint=127.0.0.1:$PORT
rgw data = $D/rgw
rgw dns name = localhost
CONF
ceph-authtool --create-keyring "$D/mon.keyring" --gen-key -n mon. --cap mon 'allow *' >/dev/null
ceph-authtool --create-keyring "$D/client.admin.keyring" --gen-key -n client.admin \
  --cap mon 'allow *' --cap osd 'allow *' --cap mgr 'allow *' --cap mds 'allow *' >/dev/null
ceph-authtool "$D/mon.keyring" --import-keyring "$D/client.admin.keyring" >/dev/null
monmaptool --create --fsid "$FSID" --addv a "[v2:127.0.0.1:$MON_PORT]" "$D/monmap" >/dev/null
ceph-mon --mkfs -i a --monmap "$D/monmap" --keyring "$D/mon.keyring"
ceph-mon -f -i a >>"$D/log/mon.out" 2>&1 & echo $! > "$D/run/pid.mon"
until ceph -s --connect-timeout 5 >/dev/null 2>&1; do sleep 0.2; done
OSD_UUID=$(cat /proc/sys/kernel/random/uuid); OSD_KEY=$(ceph-authtool --gen-print-key)
OSD_ID=$(echo "{\"cephx_secret\": \"$OSD_KEY\"}" | ceph osd new "$OSD_UUID" -i -)
mkdir -p "$D/osd/ceph-$OSD_ID"
ceph-authtool --create-keyring "$D/osd.$OSD_ID.keyring" -n "osd.$OSD_ID" --add-key "$OSD_KEY" >/dev/null
ceph-osd -i "$OSD_ID" --mkfs --osd-uuid "$OSD_UUID" >>"$D/log/osd-mkfs.out" 2>&1
ceph-osd -f -i "$OSD_ID" >>"$D/log/osd.out" 2>&1 & echo $! > "$D/run/pid.osd"
until ceph osd stat 2>/dev/null | grep -q '1 up'; do sleep 0.2; done
ceph auth get-or-create client.rgw.a mon 'allow rw' osd 'allow rwx' mgr 'allow rw' \
  -o "$D/client.rgw.a.keyring" >/dev/null
radosgw -f -n client.rgw.a >>"$D/log/rgw.out" 2>&1 & echo $! > "$D/run/pid.rgw"
until (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; do sleep 0.2; done
radosgw-admin user create --uid=blockvault --display-name=blockvault \
  --access-key="$AK" --secret-key="$SK" >"$D/user.json"
(umask 077; printf 'aws_access_key_id = %s\naws_secret_access_key = %s\n' "$AK" "$SK" >"$D/credentials")
if [ "${OBJECT_LOCK:-0}" = 1 ]; then
  # A bucket with S3 Object Lock (which turns on versioning); s3cmd cannot make one.
  curl -sSf -X PUT --aws-sigv4 "aws:amz:us-east-1:s3" --user "$AK:$SK" \
    -H "x-amz-content-sha256: e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855" \
    -H "x-amz-bucket-object-lock-enabled: true" "http://127.0.0.1:$PORT/$BUCKET" >/dev/null
else
  s3cmd --host="127.0.0.1:$PORT" --host-bucket= --no-ssl --access_key="$AK" --secret_key="$SK" \
    mb "s3://$BUCKET" >/dev/null
fi
echo "endpoint http://127.0.0.1:$PORT  bucket s3://$BUCKET  credentials $D/credentials"
