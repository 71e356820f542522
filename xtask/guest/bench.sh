# Sourced by scenario.sh when the kernel command line has pinflow.bench=1 (`cargo xtask vm-test --bench`).
# Fills the kernel datapath with exact-match flows (megaflows disabled) from UDP traffic to distinct
# ports, then times `ovs-dpctl dump-flows` (+ a parse) against `pinflow flows --datapath`.
echo "--- bench: megaflow dumps"
# pinflow serve's own periodic megaflow dumps would compete with the measured ones.
kill "$pf" 2>/dev/null; sleep 0.5
t_bench=$(cut -d' ' -f1 /proc/uptime)
ovs-vsctl set Open_vSwitch . other_config:max-idle=600000 other_config:flow-limit=400000
ovs-appctl upcall/disable-megaflows
ovs-appctl upcall/set-flow-limit 400000 2>/dev/null
for n in 10000 100000; do
    ovs-dpctl del-flows
    # One exact-match flow per packet; UDP ports cap one direction at 65535, so split across ns1/ns2.
    half=$((n / 2))
    ip netns exec ns1 bash -c "for p in \$(seq 1 $half); do echo x > /dev/udp/10.0.0.2/\$p; done" 2>/dev/null &
    sender=$!
    ip netns exec ns2 bash -c "for p in \$(seq 1 $((n - half))); do echo x > /dev/udp/10.0.0.1/\$p; done" 2>/dev/null
    wait $sender  # not a bare wait: pinflow serve is a child too
    sleep 3
    have=$(ovs-dpctl show | sed -n 's/.*flows: //p')
    echo "bench: target $n flows, datapath holds $have"
    echo "bench: ovs-dpctl dump-flows > /dev/null"
    time ovs-dpctl dump-flows > /dev/null
    echo "bench: ovs-dpctl dump-flows | parse (awk: split key fields and stats)"
    time sh -c 'ovs-dpctl dump-flows | awk -F", " "{n+=split(\$1,a,\",\"); p+=substr(\$2,9)} END {print NR, n, p}"'
    echo "bench: pinflow flows --datapath --count (dump + decode)"
    time pinflow flows --datapath --count
    echo "bench: pinflow flows --datapath > /dev/null (dump + decode + render)"
    time pinflow flows --datapath > /dev/null
done
ovs-appctl upcall/enable-megaflows
echo "bench took $(awk -v t="$t_bench" '{print $1 - t}' /proc/uptime) s"
echo "--- bench: bpf stats"
bpftool prog show 2>/dev/null | grep -E "run_time_ns|name" | head -20
