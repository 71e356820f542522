#!/usr/bin/dash
# Runs INSIDE the kernel-datapath guest (as /scenario.sh, cwd = the 9p share when present).
# Kernel-datapath OVS with two netns ports, pinflow serving in the guest, traffic (ping, an explicit
# drop flow, an output to a missing port, an upcall storm), then checks of pinflow's own /metrics,
# `pinflow flows --datapath` against `ovs-dpctl dump-flows`, and faults (datapath re-created,
# module unloaded and reloaded). Exit status = number of failed checks (0 = pass).
fails=0
ok()   { echo "ok   $*"; }
bad()  { echo "FAIL $*"; fails=$((fails + 1)); }
up()   { cut -d' ' -f1 /proc/uptime; }
scrape() { wget -q -O /tmp/metrics.txt http://127.0.0.1:9105/metrics 2>/dev/null || : > /tmp/metrics.txt; }
# expect_metric REGEX [what]: the scraped /metrics has a line matching the extended regex.
expect_metric() { if grep -Eq -- "$1" /tmp/metrics.txt; then ok "metric $1"; else bad "metric $1 ${2:-}"; fi; }
# wait_metric REGEX SECONDS: scrape until the regex matches or time runs out.
wait_metric() {
    n=0
    while [ $n -lt $(($2 * 2)) ]; do scrape; grep -Eq -- "$1" /tmp/metrics.txt && break; sleep 0.5; n=$((n + 1)); done
    expect_metric "$1"
}
start_vswitchd() {
    # OVS 3.1 started < 10 s after boot computes 0 upcall handlers and loses every upcall.
    while [ "$(cut -d. -f1 /proc/uptime)" -lt 10 ]; do sleep 0.2; done
    ovs-vswitchd --pidfile --detach --log-file
}
stop_vswitchd() { ovs-appctl -t ovs-vswitchd exit --cleanup 2>/dev/null || kill "$(cat /run/openvswitch/ovs-vswitchd.pid)"; sleep 0.5; }
bridge() {
    ovs-vsctl --may-exist add-br br0 -- set bridge br0 fail-mode=secure protocols=OpenFlow10,OpenFlow13
    for i in 1 2; do
        ovs-vsctl --may-exist add-port br0 v$i -- set interface v$i ofport_request=$i
    done
    ovs-ofctl -O OpenFlow13 add-flows br0 - <<'FLOWS'
table=0,priority=100,in_port=1,actions=goto_table:1
table=0,priority=100,in_port=2,actions=goto_table:1
table=0,priority=0,actions=drop
table=1,priority=300,icmp,nw_dst=10.0.0.99,actions=drop
table=1,priority=250,udp,tp_dst=9999,actions=output:77
table=1,priority=100,actions=goto_table:2
table=2,priority=100,arp,actions=NORMAL
table=2,priority=90,ip,nw_dst=10.0.0.1,actions=output:1
table=2,priority=90,ip,nw_dst=10.0.0.2,actions=output:2
table=2,priority=0,actions=drop
FLOWS
}

t0=$(up)
kmajor=$(uname -r | cut -d. -f1); kminor=$(uname -r | cut -d. -f2)
# Kernel BPF run-time stats, for the per-event cost of the datapath programs.
echo 1 > /proc/sys/kernel/bpf_stats_enabled
echo "--- kernel datapath OVS"
modprobe openvswitch && modprobe veth
mkdir -p /run/openvswitch /etc/openvswitch /var/log/openvswitch
ovsdb-tool create /etc/openvswitch/conf.db /usr/share/openvswitch/vswitch.ovsschema
ovsdb-server /etc/openvswitch/conf.db --remote=punix:/run/openvswitch/db.sock --pidfile --detach --log-file
ovs-vsctl --no-wait init
for i in 1 2; do
    ip netns add ns$i
    ip link add v$i type veth peer name v${i}p netns ns$i
    ip link set v$i up
    ip -n ns$i link set lo up
    ip -n ns$i addr add 10.0.0.$i/24 dev v${i}p
    ip -n ns$i link set v${i}p up
done
ip -n ns1 neigh replace 10.0.0.99 lladdr 02:00:00:00:00:99 dev v1p
start_vswitchd
bridge

echo "--- pinflow serve"
listen=127.0.0.1:9105
if [ "$PINFLOW_VM_MODE" = interactive ]; then
    ip link set lo up
    modprobe virtio_pci 2>/dev/null; modprobe virtio_net
    for _ in 1 2 3 4 5 6 7 8 9 10; do [ -e /sys/class/net/eth0 ] && break; sleep 0.3; done
    ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0
    listen=0.0.0.0:9105
else
    ip link set lo up
fi
# A low storm threshold: TCG makes upcalls ~100x slower than hardware.
printf '[datapath]\nupcall_storm_per_second = 20.0\n' > /tmp/pinflow.toml
# The default: pinflow drops its capabilities after the start (commands/capabilities.rs), and the
# datapath eBPF probe, attached lazily once a datapath exists, must work with what it kept.
RUST_LOG=info pinflow serve --config /tmp/pinflow.toml --web.listen-address $listen > /tmp/pinflow.log 2>&1 &
pf=$!
wait_metric '^pinflow_source_up\{source="ovs_datapath"\} 1' 20
echo "--- capabilities dropped, datapath eBPF probe attached after the drop"
if grep -q 'capabilities dropped' /tmp/pinflow.log; then ok "capabilities dropped"; else bad "no 'capabilities dropped' in the log"; fi
grep 'capabilities dropped' /tmp/pinflow.log | cut -c1-300
grep -E '^(CapPrm|CapEff|CapBnd|NoNewPrivs)' /proc/$pf/status
# Only CAP_BPF (39) and CAP_PERFMON (38) may remain: 0xc000000000.
if grep -Eq '^CapEff:\s+000000c000000000$' /proc/$pf/status && grep -Eq '^CapPrm:\s+000000c000000000$' /proc/$pf/status; then
    ok "pinflow kept exactly CAP_BPF+CAP_PERFMON"
else
    bad "pinflow's capabilities are not exactly CAP_BPF+CAP_PERFMON"
fi
wait_metric '^pinflow_source_up\{source="ovs_datapath_bpf"\} 1' 15
grep -q '^pinflow_source_up{source="ovs_datapath_bpf"} 1' /tmp/metrics.txt || {
    wget -q -O- http://127.0.0.1:9105/healthz 2>/dev/null | tr ',' '\n' | grep -i -A2 'ovs_datapath_bpf' | head -20
    grep -i 'ebpf\|bpf' /tmp/pinflow.log | cut -c1-1500 | head -20
}

if [ "$PINFLOW_VM_MODE" = interactive ]; then
    ip netns exec ns1 ping -c 3 -i 0.2 -W 1 10.0.0.2 >/dev/null
    echo "pinflow serves /metrics on guest port 9105, forwarded to the host address cargo xtask printed. Shell; poweroff -f ends."
    setsid cttyhack dash -i
    exit 0
fi

echo "--- upcall storm: packets from ns2 with megaflows disabled (one upcall each)"
ovs-appctl upcall/disable-megaflows
ip netns exec ns2 bash -c 'for p in $(seq 20000 22999); do echo x > /dev/udp/10.0.0.1/$p; done' 2>/dev/null &
storm=$!
ts=$(up)
wait_metric '^pinflow_ovs_datapath_unhealthy\{datapath="ovs-system",check="upcall_storm"\} [1-9]' 20
wait $storm
echo "storm: 3000 packets in $(echo "$(up) $ts" | awk '{print $1 - $2}') s"
ovs-appctl upcall/enable-megaflows
# The storm's exact-match flows would expire during the dump comparison: start clean.
ovs-dpctl del-flows
echo "--- traffic"
ip netns exec ns1 ping -c 3 -i 0.2 -W 1 10.0.0.2 && ok "ping ns1 -> ns2" || bad "ping ns1 -> ns2"
ip netns exec ns1 ping -c 3 -i 0.2 -W 1 10.0.0.99 >/dev/null; ok "ping to the drop flow (loss expected)"
ip netns exec ns1 bash -c 'for i in 1 2 3; do echo x > /dev/udp/10.0.0.2/9999; done'
ok "udp to the output-to-missing-port flow"
sleep 1.5

echo "--- /metrics"
scrape
grep -E '^pinflow_(ovs_|source_up)' /tmp/metrics.txt
expect_metric '^pinflow_source_up\{source="ovs_datapath"\} 1'
expect_metric '^pinflow_ovs_datapath_flows\{datapath="ovs-system"\} [1-9]'
expect_metric '^pinflow_ovs_datapath_lookups_total\{datapath="ovs-system",result="hit"\} [1-9]'
expect_metric '^pinflow_ovs_datapath_lookups_total\{datapath="ovs-system",result="missed"\} [1-9]'
expect_metric '^pinflow_ovs_datapath_lookups_total\{datapath="ovs-system",result="lost"\} 0'
expect_metric '^pinflow_ovs_datapath_unhealthy\{datapath="ovs-system",check="lost_upcalls"\} 0'
expect_metric '^pinflow_ovs_datapath_masks\{datapath="ovs-system"\} [1-9]'
expect_metric '^pinflow_ovs_vport_info\{datapath="ovs-system",port="v1",port_no="2",type="netdev",ifindex="[1-9][0-9]*",domain=""\} 1'
expect_metric '^pinflow_ovs_vport_dropped_total\{datapath="ovs-system",port="v1"\} [0-9]'
# Per-port upcalls: the kernel's vport upcall stats (6.2+), else the eBPF upcall program.
expect_metric '^pinflow_source_up\{source="ovs_datapath_bpf"\} 1'
expect_metric '^pinflow_ovs_upcalls_total\{datapath="ovs-system",port="v2"\} [1-9][0-9][0-9]'
expect_metric '^pinflow_ovs_datapath_actions_total\{action="output"\} [1-9]'
# OVS drop reasons reach kfree_skb from Linux 6.6 on.
if [ "$kmajor" -gt 6 ] || { [ "$kmajor" -eq 6 ] && [ "$kminor" -ge 6 ]; }; then
    expect_metric '^pinflow_ovs_drops_total\{port="v1",reason="[a-z_]+"\} [1-9]'
else
    echo "note: kernel $(uname -r) < 6.6 reports no OVS drop reasons; pinflow_ovs_drops_total stays empty"
fi
wait_metric '^pinflow_ovs_datapath_drop_flows\{datapath="ovs-system"\} [1-9]' 8

echo "--- pinflow flows --datapath vs ovs-dpctl dump-flows"
norm() { sed -E 's/used:[^,]*/used:X/; s/, packets:[0-9]+, bytes:[0-9]+//' | sort; }
ovs-dpctl dump-flows > /tmp/dpctl.txt 2>&1
pinflow flows --datapath > /tmp/pinflow-flows.txt 2>&1
wc -l /tmp/dpctl.txt /tmp/pinflow-flows.txt
head -5 /tmp/dpctl.txt
if norm < /tmp/dpctl.txt > /tmp/a && norm < /tmp/pinflow-flows.txt > /tmp/b && diff /tmp/a /tmp/b > /tmp/flows.diff; then
    ok "pinflow flows --datapath == ovs-dpctl dump-flows ($(wc -l < /tmp/a) flows, used/stats normalised)"
else
    bad "pinflow flows --datapath differs from ovs-dpctl dump-flows"; head -20 /tmp/flows.diff
fi
# Real genetlink replies for the decoder fixtures (collector/src/sources/ovs_dp/fixtures/).
[ -d /mnt/host ] && pinflow flows --datapath --capture /mnt/host/genl-capture.hex > /mnt/host/genl-capture.txt
[ -d /mnt/host ] && cp /tmp/dpctl.txt /tmp/pinflow-flows.txt /mnt/host/ 2>/dev/null

echo "--- eBPF per-event cost (kernel BPF stats, as pinflow exports them)"
scrape; grep -E '^pinflow_bpf_run' /tmp/metrics.txt
awk -F'[{}" ]+' '/^pinflow_bpf_run_seconds_total/ {t[$3]=$4} /^pinflow_bpf_runs_total/ {n[$3]=$4}
    END {for (p in n) if (n[p] > 0) printf "bpf cost: %s %.0f ns/run over %d runs\n", p, t[p] * 1e9 / n[p], n[p]}' /tmp/metrics.txt
echo "--- port deleted: its upcall series ends (eBPF counts pruned after two polls)"
grep -q '^pinflow_ovs_upcalls_total{datapath="ovs-system",port="v2"}' /tmp/metrics.txt || bad "no upcall series of v2 before its deletion"
ovs-vsctl del-port br0 v2
sleep 3.5
scrape
if grep -q '^pinflow_ovs_upcalls_total{datapath="ovs-system",port="v2"}' /tmp/metrics.txt; then bad "deleted port v2 still has an upcall series"; else ok "deleted port v2's upcall series gone"; fi
expect_metric '^pinflow_ovs_upcalls_total\{datapath="ovs-system",port="v1"\} [0-9]'
ovs-vsctl --may-exist add-port br0 v2 -- set interface v2 ofport_request=2
echo "--- fault: datapath deleted and re-created"
stop_vswitchd
ovs-dpctl del-dp ovs-system 2>/dev/null
sleep 2.5
scrape
if grep -q '^pinflow_ovs_datapath_flows{datapath="ovs-system"}' /tmp/metrics.txt; then bad "deleted datapath still exported"; else ok "deleted datapath gone from /metrics"; fi
kill -0 $pf 2>/dev/null && ok "pinflow alive after datapath deletion" || bad "pinflow died after datapath deletion"
echo "--- fault: module unloaded and reloaded"
rmmod openvswitch && ok "openvswitch unloaded" || echo "note: rmmod openvswitch failed (in use?)"; lsmod | grep openvswitch
wait_metric '^pinflow_source_up\{source="ovs_datapath"\} 0' 10
modprobe openvswitch
start_vswitchd
bridge
wait_metric '^pinflow_source_up\{source="ovs_datapath"\} 1' 15
wait_metric '^pinflow_source_up\{source="ovs_datapath_bpf"\} 1' 10
ip netns exec ns1 ping -c 2 -i 0.2 -W 1 10.0.0.2 >/dev/null
wait_metric '^pinflow_ovs_datapath_lookups_total\{datapath="ovs-system",result="hit"\} [1-9]' 10
kill -0 $pf 2>/dev/null && ok "pinflow alive after module reload" || bad "pinflow died after module reload"
if grep -qi panick /tmp/pinflow.log; then bad "pinflow panicked"; fi

if [ -x /usr/bin/pinflow-bench.sh ] && grep -q 'pinflow.bench=1' /proc/cmdline; then . /usr/bin/pinflow-bench.sh; fi

echo "--- pinflow log (warnings and errors, first 300 characters)"
grep -E "^[0-9T:.-]+Z +(WARN|ERROR) " /tmp/pinflow.log | cut -c1-300 | head -20
echo "--- ovs-vswitchd warnings"; grep -E "ERR|WARN" /var/log/openvswitch/ovs-vswitchd.log | tail -5
echo "guest scenario: uptime $t0 -> $(up) s, $fails failed check(s)"
exit $fails
