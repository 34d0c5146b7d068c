#!/usr/bin/env bash
# tests/e2e/asterisk-lab.sh: a real Asterisk 22 (Debian sid) in a debootstrap chroot, for
# the end-to-end tests (tests/it/e2e.rs). Everything it starts listens on loopback only.
#
#   asterisk-lab.sh check                 exit 0 if the lab can run here, else print why (exit 1)
#   asterisk-lab.sh prepare               build the chroot once into the cache (reused later)
#   asterisk-lab.sh start RUN_DIR AMI_PORT AGI_PORT [OWNER_PID [AMI_TLS_PORT]]
#                                         write the PBX config for one run into RUN_DIR and
#                                         start Asterisk on those loopback ports; prints its PID.
#                                         With AMI_TLS_PORT, AMI also listens there with TLS
#                                         (tlsenable), its certificate made by `make_tls_cert`
#   asterisk-lab.sh stop RUN_DIR          stop the Asterisk of RUN_DIR (by its PID)
#   asterisk-lab.sh watch OWNER_PID PID   kill PID once OWNER_PID is gone (detach it)
#
# The cache (AZB_LAB_CACHE, default /var/cache/asterisk-zammad-bridge-lab) holds the chroot
# `sid/` and the stamp `sid.stamp`, written only after a complete build; a lock file keeps
# two test processes from building it at the same time. AZB_LAB_MIRROR picks the Debian
# mirror. Needs root (debootstrap, chroot, a private mount namespace).
#
# The PBX configuration is what we ship: the [zammad] user of asterisk-examples/manager.conf,
# the contexts of asterisk-examples/extensions.conf (only their "Your own routing" part
# is replaced by the lab's simulated routing, and the FastAGI port by AGI_PORT) and, beside
# them, the FreePBX contexts of asterisk-examples/extensions_custom.conf (its commented-out
# examples enabled), reached from a cut-down imitation of FreePBX 17's dialplan. Phones,
# trunk and the outside world are Local channels (see `lab_dialplan` below); chan_pjsip is
# not loaded, because res_pjsip opens DNS sockets on the wildcard address.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
examples="$repo/asterisk-examples"
cache="${AZB_LAB_CACHE:-/var/cache/asterisk-zammad-bridge-lab}"
root="$cache/sid"
stamp="$cache/sid.stamp"
mirror="${AZB_LAB_MIRROR:-http://deb.debian.org/debian}"
# Inside the chroot each Asterisk sees its own RUN_DIR here (a bind mount in a private
# mount namespace), so concurrent runs share the chroot but nothing else.
lab_mount=/azb-lab

die() {
    echo "asterisk-lab: $*" >&2
    exit 1
}

log() {
    echo "asterisk-lab: $*" >&2
}

# die, quoting the last lines of a log file.
die_log() {
    local file="$1"
    shift
    die "$*; the end of $file:
$(tail -n 5 "$file" 2>/dev/null)"
}

cmd_check() {
    [[ "$(uname -s)" == Linux ]] || die "needs Linux (chroot, mount namespaces); this is $(uname -s)"
    [[ "$(id -u)" == 0 ]] || die "needs root (debootstrap, chroot and mount namespaces); running as uid $(id -u)"
    for tool in chroot unshare mount flock; do
        command -v "$tool" >/dev/null || die "needs the command '$tool' (util-linux/coreutils)"
    done
    if [[ ! -e "$stamp" ]]; then
        command -v debootstrap >/dev/null || command -v apt-get >/dev/null ||
            die "needs debootstrap, or apt-get to install it"
    fi
    unshare --mount true 2>/dev/null ||
        die "cannot create a mount namespace here (unshare --mount failed: not privileged enough, e.g. in a container without CAP_SYS_ADMIN)"
}

# Builds the chroot unless the stamp says it is complete. Runs under the cache lock.
cmd_prepare() {
    cmd_check
    mkdir -p "$cache"
    # A subshell holds the lock, so that no process started later inherits it.
    (
        flock 9
        if [[ ! -e "$stamp" ]]; then
            build_chroot
        fi
    ) 9>"$cache/lock"
}

build_chroot() {
    local started=$SECONDS
    if ! command -v debootstrap >/dev/null; then
        log "installing debootstrap with apt-get"
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap; } \
            >"$cache/apt-debootstrap.log" 2>&1 ||
            die_log "$cache/apt-debootstrap.log" "could not install debootstrap with apt-get (no network to the Debian mirror?)"
    fi
    log "building a Debian sid chroot with Asterisk in $root (once; about a minute)"
    rm -rf "$root"
    debootstrap --variant=minbase sid "$root" "$mirror" >"$cache/debootstrap.log" 2>&1 ||
        die_log "$cache/debootstrap.log" "debootstrap of Debian sid from $mirror failed (no network to the mirror?)"
    # sid's Release file may be past its Valid-Until date on a dated mirror.
    echo 'Acquire::Check-Valid-Until "false";' >"$root/etc/apt/apt.conf.d/99azb-lab"
    # Installing asterisk must not start it (there is no init in the chroot anyway).
    printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
    chmod 755 "$root/usr/sbin/policy-rc.d"
    in_chroot /bin/sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends asterisk' \
        >"$cache/apt-asterisk.log" 2>&1 ||
        die_log "$cache/apt-asterisk.log" "apt-get install asterisk in the sid chroot failed (no network to the mirror?)"
    in_chroot /bin/sh -c 'apt-get clean'
    mkdir -p "$root$lab_mount"
    local version
    version="$(in_chroot /usr/sbin/asterisk -V)"
    echo "$version, built $(date -u +%FT%TZ) in $((SECONDS - started)) s" >"$stamp.tmp"
    mv "$stamp.tmp" "$stamp"
    log "chroot ready: $(cat "$stamp")"
}

# Runs a command in the chroot with /proc and /dev mounted in a private mount namespace,
# so the mounts vanish with the process and nothing is left to unmount. (Asterisk itself
# also starts without them, on the device nodes debootstrap made; apt's maintainer
# scripts expect them.)
in_chroot() {
    # shellcheck disable=SC2016 # expanded by the inner shell
    unshare --mount --propagation private /bin/sh -c '
        root="$1"; shift
        mount -t proc proc "$root/proc"
        mount --rbind /dev "$root/dev"
        exec chroot "$root" "$@"
    ' in_chroot "$root" "$@"
}

# The lab's AMI users' secrets (loopback only). The tests read them from here.
ami_secret_zammad=lab-zammad-secret
ami_secret_lab=lab-driver-secret

# A CA and a server certificate signed by it in RUN_DIR/tls (ca.pem, asterisk.pem,
# asterisk.key): the name pbx.lab.test in the subjectAltName (and the CN), not 127.0.0.1,
# so that a client must be told the name (ami.tls_server_name). Made with the host's
# openssl; the CA's key is deleted at once.
make_tls_cert() {
    local dir="$1/tls"
    command -v openssl >/dev/null || die "needs openssl for the AMI TLS certificate"
    mkdir -p "$dir"
    (
        cd "$dir"
        openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=azb lab CA" \
            -keyout ca.key -out ca.pem \
            -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign"
        openssl req -new -newkey rsa:2048 -nodes -subj "/CN=pbx.lab.test" \
            -keyout asterisk.key -out asterisk.csr
        printf 'subjectAltName=DNS:pbx.lab.test\nextendedKeyUsage=serverAuth\n' >asterisk.ext
        openssl x509 -req -days 2 -in asterisk.csr -CA ca.pem -CAkey ca.key -set_serial 1 \
            -extfile asterisk.ext -out asterisk.pem
        rm -f ca.key asterisk.csr asterisk.ext
    ) >"$1/openssl.log" 2>&1 || die_log "$1/openssl.log" "could not make the AMI TLS certificate"
}

# Writes the PBX configuration of one run into RUN_DIR/etc (and the dirs Asterisk writes to).
write_config() {
    local run_dir="$1" ami_port="$2" agi_port="$3" ami_tls_port="${4:-}"
    local etc="$run_dir/etc" moddir
    moddir="$(cd "$root" && echo usr/lib/*/asterisk/modules)"
    [[ -d "$root/$moddir" ]] || die "no Asterisk module dir in $root"
    mkdir -p "$etc" "$run_dir"/{lib,spool,run,log}

    cat >"$etc/asterisk.conf" <<CONF
[directories]
astetcdir => $lab_mount/etc
astmoddir => /$moddir
astvarlibdir => /var/lib/asterisk
astdbdir => $lab_mount/lib
astkeydir => $lab_mount/lib
astdatadir => /usr/share/asterisk
astagidir => /usr/share/asterisk/agi-bin
astspooldir => $lab_mount/spool
astrundir => $lab_mount/run
astlogdir => $lab_mount/log
astsbindir => /usr/sbin

[options]
verbose = 3
debug = 0
CONF

    # autoload=no and an explicit list: starts in a fraction of a second, quietly.
    cat >"$etc/modules.conf" <<'CONF'
[modules]
autoload = no
load => pbx_config.so
load => app_dial.so
load => app_queue.so
load => app_directed_pickup.so
load => res_agi.so
load => res_speech.so
load => func_callerid.so
load => func_channel.so
load => func_logic.so
load => func_strings.so
load => bridge_simple.so
load => bridge_builtin_features.so
load => res_timing_timerfd.so
load => app_playtones.so
load => app_stack.so
load => app_exec.so
CONF

    cat >"$etc/logger.conf" <<'CONF'
[general]
[logfiles]
full => notice,warning,error,verbose
console => error
CONF

    printf '[general]\nenable = no\n' >"$etc/cdr.conf"
    printf '[general]\nenable = no\n' >"$etc/cel.conf"
    cp "$root/etc/asterisk/indications.conf" "$etc/indications.conf"
    # Present but empty, so that Asterisk does not complain about their absence.
    for conf in acl.conf udptl.conf queuerules.conf; do
        : >"$etc/$conf"
    done
    printf '[general]\n' >"$etc/ccss.conf"

    # Attended transfer through AMI Atxfer needs a feature code (the DTMF it injects).
    # No prompts: the chroot has no sound files, and a prompt that fails to play aborts
    # the transfer.
    cat >"$etc/features.conf" <<'CONF'
[general]
transferdigittimeout = 1
atxfernoanswertimeout = 15
transferannouncesound =
transferretrysound =
transferinvalidsound =
xfersound =
xferfailsound =
[featuremap]
blindxfer => #1
atxfer => *2
CONF

    # manager.conf: the shipped file, with this run's port and the [zammad] secret, plus
    # the test driver's own user (Originate, transfers, Command).
    grep -q '^\[zammad\]' "$examples/manager.conf" || die "no [zammad] section in $examples/manager.conf"
    sed -e "s/^port = .*/port = $ami_port/" \
        -e "s/^bindaddr = .*/bindaddr = 127.0.0.1/" \
        -e "/^\[zammad\]/,/^\[/ s/^secret = .*/secret = $ami_secret_zammad/" \
        "$examples/manager.conf" >"$etc/manager.conf"
    grep -q "^port = $ami_port\$" "$etc/manager.conf" || die "could not set the AMI port in manager.conf"
    grep -q "^secret = $ami_secret_zammad\$" "$etc/manager.conf" || die "could not set the [zammad] secret in manager.conf"
    if [[ -n "$ami_tls_port" ]]; then
        make_tls_cert "$run_dir"
        sed -i "/^port = $ami_port\$/a tlsenable = yes\ntlsbindaddr = 127.0.0.1:$ami_tls_port\ntlscertfile = $lab_mount/tls/asterisk.pem\ntlsprivatekey = $lab_mount/tls/asterisk.key" \
            "$etc/manager.conf"
        grep -q "^tlsbindaddr = 127.0.0.1:$ami_tls_port\$" "$etc/manager.conf" || die "could not enable TLS in manager.conf"
    fi
    cat >>"$etc/manager.conf" <<CONF

; ---- The lab's test driver (not shipped) ----
[lab]
secret = $ami_secret_lab
deny = 0.0.0.0/0.0.0.0
permit = 127.0.0.1/255.255.255.255
read = all
write = all
writetimeout = 5000
eventfilter = !Event: TestEvent
CONF

    cat >"$etc/queues.conf" <<'CONF'
[general]
persistentmembers = no

[support]
strategy = ringall
timeout = 15
retry = 1
wrapuptime = 0
ringinuse = yes
joinempty = yes
leavewhenempty = no
member => Local/201@phones,0,Alice
member => Local/203@phones,0,Carol

; The same queue as FreePBX names queues (by number), for the FreePBX examples.
[700]
strategy = ringall
timeout = 15
retry = 1
wrapuptime = 0
ringinuse = yes
joinempty = yes
leavewhenempty = no
member => Local/201@phones,0,Alice
member => Local/203@phones,0,Carol
CONF

    # extensions.conf: the shipped contexts up to their "Your own routing" part, with this
    # run's FastAGI port, then the lab's routing and its simulated phones, trunk and PSTN.
    local routing_marker='; ---- Your own routing'
    grep -q "^$routing_marker" "$examples/extensions.conf" ||
        die "no '$routing_marker' line in $examples/extensions.conf"
    grep -q 'agi://127\.0\.0\.1:4573/' "$examples/extensions.conf" ||
        die "no agi://127.0.0.1:4573/ in $examples/extensions.conf"
    local freepbx="$examples/extensions_custom.conf"
    grep -q 'agi://127\.0\.0\.1:4574/' "$freepbx" ||
        die "no agi://127.0.0.1:4574/ in $freepbx"
    grep -q '^\[macro-dialout-trunk-predial-hook\]' "$freepbx" ||
        die "no [macro-dialout-trunk-predial-hook] in $freepbx"
    {
        cat <<'CONF'
[general]
static = yes
writeprotect = yes
autofallthrough = yes
clearglobalvars = yes

[globals]
; How long Dial rings before it gives up, and how long an answering phone or outside
; number talks before it hangs up (seconds). A call overrides them with inherited
; channel variables (AMI Originate: Variable: __LAB_TALK=20).
LAB_DIAL_TIMEOUT = 20
LAB_TALK = 4
; The context through which [pstn-withheld] callers reach the PBX.
LAB_TRUNK = from-trunk
; The trunk's outbound caller ID, as FreePBX sets it before its predial hook.
LAB_TRUNK_CID = 4930123456000

; ---- asterisk-examples/extensions.conf ----
CONF
        sed -n "1,/^$routing_marker/p" "$examples/extensions.conf" |
            sed -e '$d' -e "s#agi://127\.0\.0\.1:4573/#agi://127.0.0.1:$agi_port/#g"
        # The FreePBX file whole, on this run's FastAGI port, with its commented-out
        # examples (";exten => ...", "; same => ...") enabled; its [zammad-rejected] is
        # renamed, as the plain file has one too.
        printf '\n; ---- asterisk-examples/extensions_custom.conf (FreePBX) ----\n'
        sed -E -e "s#agi://127\.0\.0\.1:4574/#agi://127.0.0.1:$agi_port/#g" \
            -e 's/zammad-rejected/zammad-rejected-freepbx/g' \
            -e 's/^;( *(exten|same) =>)/\1/' \
            "$freepbx"
        lab_dialplan
    } >"$etc/extensions.conf"
}

# The lab's routing and the simulated world, all Local channels:
#   DID 49301234562XX  phone 2XX        DID 4930123456600  ring group 201 & 203
#   DID 4930123456700  queue support    (a leading + is accepted and dropped)
#   DID 4930123456804, ...805  phone 204 behind a call-acceptance step nobody accepts
#                      (Dial's U() and G() options)
#   phones 201, 204, 205: ring 2 s, answer, talk LAB_TALK s; 202 busy; 203, 206, 207 never answer
#   pstn: every number rings 2 s, answers, talks LAB_TALK s; 1555555018X ring 6 s first
#   pstn-withheld: a caller with presentation prohibited dials DID EXTEN through LAB_TRUNK
# FreePBX (the contexts of extensions_custom.conf, entered at from-pstn-custom):
#   [ext-did]: DIDs 4930123456700 and ...701 to queue 700, 4930123456900 to a follow-me
#   whose member is outside number 15555550181; other DIDs as above
#   [freepbx-internal]: a FreePBX phone dialing out (AMPUSER, OUTNUM, the predial hook)
lab_dialplan() {
    cat <<'CONF'
; ---- The lab's own routing (replaces the examples' "Your own routing") ----

[from-pstn]
; A second inbound context, without the FastAGI: calls the bridge sees on AMI only.
exten => _X.,1,Goto(inbound-routes,${EXTEN},1)
exten => _+X.,1,Goto(inbound-routes,${EXTEN},1)

[inbound-routes]
exten => _+X.,1,Goto(${EXTEN:1},1)
exten => _49301234562XX,1,Dial(Local/${EXTEN:-3}@phones,${LAB_DIAL_TIMEOUT},t)
 same => n,Hangup()
exten => 4930123456600,1,Dial(Local/201@phones&Local/203@phones,${LAB_DIAL_TIMEOUT},t)
 same => n,Hangup()
exten => 4930123456700,1,Queue(support,t,,,${LAB_DIAL_TIMEOUT})
 same => n,Hangup()
exten => 4930123456804,1,Dial(Local/204@confirm/n,${LAB_DIAL_TIMEOUT},t)
 same => n,Hangup()
exten => 4930123456805,1,Dial(Local/204@confirm-g/n,${LAB_DIAL_TIMEOUT},t)
 same => n,Hangup()

[internal-routes]
exten => _2XX,1,Dial(Local/${EXTEN}@phones,${LAB_DIAL_TIMEOUT},t)
 same => n,Hangup()

[outbound-routes]
exten => _X.,1,Dial(Local/${EXTEN}@pstn,60)
 same => n,Hangup()
exten => _+X.,1,Dial(Local/${EXTEN}@pstn,60)
 same => n,Hangup()

; ---- The simulated world ----

[phones]
exten => _20[145],1,Ringing()
 same => n,Wait(2)
 same => n,Answer()
 same => n,Playtones(440)
 same => n,Wait(${LAB_TALK})
 same => n,Hangup()
exten => 202,1,Busy(10)
exten => _20[367],1,Ringing()
 same => n,Wait(600)
 same => n,Hangup()

[confirm]
; A leg that asks the answering phone to accept the call ("press 1"), as FreePBX's ring
; groups and follow-me with "Confirm Calls" do: phone EXTEN answers, the routine of Dial's
; U() runs on it before the caller is connected, nobody presses 1, and it returns ABORT:
; Dial hangs up both the phone and this leg. The caller was never connected.
exten => _2XX,1,Dial(Local/${EXTEN}@phones,${LAB_DIAL_TIMEOUT},U(confirm-prompt))
 same => n,Hangup()

[confirm-prompt]
exten => s,1,Wait(1)
 same => n,Set(GOSUB_RESULT=ABORT)
 same => n,Return()

[confirm-g]
; The same step with Dial's G(): once phone EXTEN answers, Dial ends (ANSWER) without
; connecting anyone and sends this leg to s,1 and the phone to s,2 of [confirm-g-split].
; The phone hears the prompt and, as nobody presses 1, hangs up; the leg, which would have
; been connected on a 1, gives up too.
exten => _2XX,1,Dial(Local/${EXTEN}@phones,${LAB_DIAL_TIMEOUT},G(confirm-g-split^s^1))
 same => n,Hangup()

[confirm-g-split]
exten => s,1,Goto(s,10)
exten => s,2,Goto(s,20)
exten => s,10,Wait(2)
exten => s,11,Hangup()
exten => s,20,Wait(1)
exten => s,21,Hangup()

[phones-pickup]
; Phone EXTEN picks up the ringing channel named in LAB_PICKUP.
exten => _2XX,1,PickupChan(${LAB_PICKUP})
 same => n,Hangup()

[pstn]
exten => _X.,1,Ringing()
 same => n,Wait(2)
 same => n,Answer()
 same => n,Wait(${LAB_TALK})
 same => n,Hangup()
exten => _+X.,1,Goto(${EXTEN:1},1)
; Ring long enough for a transfer to complete, or a caller to give up, while they ring.
exten => _1555555018X,1,Ringing()
 same => n,Wait(6)
 same => n,Answer()
 same => n,Wait(${LAB_TALK})
 same => n,Hangup()

[pstn-withheld]
; A caller who withholds their number (CLIR): the network still passes the digits on,
; marked "presentation prohibited", when they dial DID EXTEN through the trunk. (/n: the
; trunk's Local channel must not be optimized away once both its halves are bridged.)
exten => _X.,1,Set(CALLERID(num-pres)=prohib)
 same => n,Dial(Local/${EXTEN}@${LAB_TRUNK}/n)
 same => n,Hangup()

; ---- FreePBX 17, cut down to what the bridge meets (its contexts are those of
; ---- asterisk-examples/extensions_custom.conf, above)

[ext-did]
; FreePBX's inbound routes, where [from-pstn-custom] hands the calls over.
exten => 4930123456700,1,Queue(700,t,,,${LAB_DIAL_TIMEOUT})
 same => n,Hangup()
exten => 4930123456701,1,Queue(700,t,,,${LAB_DIAL_TIMEOUT})
 same => n,Hangup()
; A follow-me (or ring group) whose member is an outside number: FreePBX dials it as
; Local/NUMBER@from-internal/n, whose ;2 half goes out through the trunk and the predial hook.
exten => 4930123456900,1,Dial(Local/15555550181@freepbx-internal/n,${LAB_DIAL_TIMEOUT},t)
 same => n,Hangup()
exten => _X.,1,Goto(inbound-routes,${EXTEN},1)
exten => _+X.,1,Goto(inbound-routes,${EXTEN},1)

[freepbx-internal]
; FreePBX's from-internal, an outbound route and macro-dialout-trunk, as FreePBX 17 runs
; them (Gosub, not Macro): AMPUSER is the calling phone's extension (FreePBX looks the
; caller's device up; empty for anyone else, e.g. the outside caller on a follow-me leg),
; OUTNUM the number to dial, and by the time the predial hook runs CALLERID(num) is the
; trunk's outbound caller ID.
exten => _X.,1,Set(AMPUSER=${IF(${REGEX("^2[0-9][0-9]$" ${CALLERID(num)})}?${CALLERID(num)}:)})
 same => n,Gosub(freepbx-dialout-trunk,s,1(${EXTEN}))
 same => n,Hangup()

[freepbx-dialout-trunk]
exten => s,1,Set(OUTNUM=${ARG1})
 same => n,ExecIf($["${AMPUSER}" != ""]?Set(CALLERID(num)=${LAB_TRUNK_CID}))
 same => n(gocall),Gosub(macro-dialout-trunk-predial-hook,s,1())
 same => n,GotoIf($["${PREDIAL_HOOK_RET}" = "BYPASS"]?bypass)
 same => n,Dial(Local/${OUTNUM}@pstn,60)
 same => n(bypass),Return()
CONF
}

cmd_start() {
    local run_dir="$1" ami_port="$2" agi_port="$3" owner="${4:-}" ami_tls_port="${5:-}"
    [[ -e "$stamp" ]] || cmd_prepare
    mkdir -p "$run_dir"
    run_dir="$(cd "$run_dir" && pwd)"
    write_config "$run_dir" "$ami_port" "$agi_port" "$ami_tls_port"
    # unshare and chroot exec, so $! is Asterisk's own PID. -f: no fork, -n: no colours.
    # shellcheck disable=SC2016 # expanded by the inner shell
    unshare --mount --propagation private /bin/sh -c '
        root="$1"; run_dir="$2"; lab="$3"
        mount -t proc proc "$root/proc"
        mount --rbind /dev "$root/dev"
        mount --bind "$run_dir" "$root$lab"
        exec chroot "$root" /usr/sbin/asterisk -f -n -C "$lab/etc/asterisk.conf"
    ' lab "$root" "$run_dir" "$lab_mount" </dev/null >"$run_dir/asterisk.out" 2>&1 &
    local pid=$!
    echo "$pid" >"$run_dir/asterisk.pid"
    if [[ -n "$owner" ]]; then
        cmd_watch "$owner" "$pid" </dev/null >/dev/null 2>&1 &
        disown
    fi
    echo "$pid"
}

cmd_stop() {
    local run_dir="$1" pid
    [[ -e "$run_dir/asterisk.pid" ]] || return 0
    pid="$(cat "$run_dir/asterisk.pid")"
    if kill "$pid" 2>/dev/null; then
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$run_dir/asterisk.pid"
}

cmd_watch() {
    local owner="$1" pid="$2"
    while kill -0 "$owner" 2>/dev/null && kill -0 "$pid" 2>/dev/null; do
        sleep 1
    done
    kill "$pid" 2>/dev/null || true
}

case "${1:-}" in
check) cmd_check ;;
prepare) cmd_prepare ;;
start)
    [[ $# -ge 4 ]] || die "usage: $0 start RUN_DIR AMI_PORT AGI_PORT [OWNER_PID [AMI_TLS_PORT]]"
    cmd_start "${@:2}"
    ;;
stop)
    [[ $# -eq 2 ]] || die "usage: $0 stop RUN_DIR"
    cmd_stop "$2"
    ;;
watch)
    [[ $# -eq 3 ]] || die "usage: $0 watch OWNER_PID PID"
    cmd_watch "$2" "$3"
    ;;
*) die "usage: $0 check|prepare|start RUN_DIR AMI_PORT AGI_PORT [OWNER_PID [AMI_TLS_PORT]]|stop RUN_DIR|watch OWNER_PID PID" ;;
esac
