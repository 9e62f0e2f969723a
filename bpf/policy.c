// SPDX-License-Identifier: GPL-2.0
/*
 * nicwarden MultiNetworkPolicy datapath: one tc (clsact, direct-action)
 * program for every policed interface and both directions.
 *
 * Entry: each interface's tc filters run one of two tiny entry programs
 * shared by all interfaces (agent/host/bpfsys.py), which copy the interface
 * key from skb->tc_classid (the filter's classid, set by cls_bpf just
 * before the program runs) to skb->cb[0] and the direction to skb->cb[1],
 * then tail-call this program through nw_progs[0]. Keys past 16 bits get
 * per-interface trampolines holding the key as an immediate instead. The
 * key cannot come from the packet: skb->ifindex repeats across network
 * namespaces and the tc bpf_get_netns_cookie() reports skb->sk's netns
 * (init_net for forwarded/received packets), not the device's.
 *
 * Per packet, independent of rule and CIDR count:
 *   parse (Ethernet, up to two VLAN tags, IPv4/IPv6 + bounded extension headers,
 *   TCP/UDP/SCTP ports, ICMP/ICMPv6) with bpf_skb_load_bytes (works for
 *   non-linear skbs, where direct packet access would need a pull first);
 *   always pass ARP, IPv6 ND and MLD, and non-IP ethertypes;
 *   one or two cfg lookups, one LRU flow lookup; for a new flow on an isolated
 *   direction one peer LPM lookup and at most one port LPM lookup.
 *
 * Flows: a packet allowed on either direction (or seen on a non-isolated
 * direction while the other one is isolated) records its flow; later packets
 * of the flow, either way, pass without a policy lookup. A flow remembers the
 * generation of the table that admitted it; after a policy switch its next
 * packet re-checks the admitting packet against the new table (unless the
 * table says NW_CFG_KEEP_ESTABLISHED), so a switch revokes exactly the flows
 * the new policy no longer allows.
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/ipv6.h>
#include <uapi/linux/in.h>
#include <uapi/linux/in6.h>

#include "layout.h"

NW_DECLARE_MAPS

/* Pass lets a later tc filter on the same hook (if any) have its say;
 * TC_ACT_OK would end the chain. With no later filter it means "pass". */
#define NW_PASS TC_ACT_UNSPEC
#define NW_DROP TC_ACT_SHOT

#define ETH_P_8021Q_ 0x8100
#define ETH_P_8021AD_ 0x88A8
#define ETH_P_MPLS_UC_ 0x8847
#define ETH_P_MPLS_MC_ 0x8848
#define ETH_P_PPP_SES_ 0x8864

#define NEXTHDR_HOP_ 0
#define NEXTHDR_ROUTING_ 43
#define NEXTHDR_FRAGMENT_ 44
#define NEXTHDR_AUTH_ 51
#define NEXTHDR_DEST_ 60

#define PARSE_IP 0
#define PARSE_ALWAYS 1    /* ARP, non-IP */
#define PARSE_MALFORMED 2 /* truncated/invalid IP header: drop if isolated */

struct nw_pkt {
    __u32 saddr[4];
    __u32 daddr[4];
    __u32 l4off;
    __u16 sport;   /* network order */
    __u16 dport;   /* network order; 0 unless the protocol carries ports */
    __u8 family;   /* 4 or 6 */
    __u8 proto;
    __u8 has_l4;   /* 0 for non-first fragments */
    __u8 ported;   /* TCP/UDP/SCTP with ports read */
    __u8 tcp_flags;
    __u8 icmp_type;
    __u8 icmp_code;
    __u8 pad;
};

struct nw_l4ports {
    __be16 sport;
    __be16 dport;
};

static __always_inline int nw_is_ported(__u8 proto)
{
    return proto == IPPROTO_TCP || proto == IPPROTO_UDP || proto == IPPROTO_SCTP;
}

/* Reads the IP header at off into pkt; returns PARSE_*. */
static __always_inline int nw_parse_ip(struct __sk_buff *skb, __u32 off, __u16 ethertype,
                                       struct nw_pkt *pkt)
{
    if (ethertype == ETH_P_IP) {
        struct iphdr ip;
        if (bpf_skb_load_bytes(skb, off, &ip, sizeof(ip)) < 0)
            return PARSE_MALFORMED;
        if (ip.version != 4 || ip.ihl < 5)
            return PARSE_MALFORMED;
        pkt->family = 4;
        pkt->proto = ip.protocol;
        pkt->saddr[0] = ip.saddr;
        pkt->daddr[0] = ip.daddr;
        /* Only the first fragment carries the L4 header (IHL: options vary). */
        pkt->has_l4 = (bpf_ntohs(ip.frag_off) & 0x1fff) == 0;
        pkt->l4off = off + ip.ihl * 4;
        return PARSE_IP;
    }
    if (ethertype == ETH_P_IPV6) {
        struct ipv6hdr ip6;
        if (bpf_skb_load_bytes(skb, off, &ip6, sizeof(ip6)) < 0)
            return PARSE_MALFORMED;
        pkt->family = 6;
        __builtin_memcpy(pkt->saddr, &ip6.saddr, 16);
        __builtin_memcpy(pkt->daddr, &ip6.daddr, 16);
        __u8 nexthdr = ip6.nexthdr;
        __u32 l4 = off + sizeof(ip6);
        pkt->has_l4 = 1;
        /* Skip a bounded number of extension headers; past the bound, the
         * unknown next header is the "protocol" (dport 0, protocol-wide
         * entries only), which fails closed for port rules. */
#pragma unroll
        for (int i = 0; i < NW_IPV6_EXT_MAX; i++) {
            __u8 ext[8];
            if (nexthdr != NEXTHDR_HOP_ && nexthdr != NEXTHDR_ROUTING_ &&
                nexthdr != NEXTHDR_FRAGMENT_ && nexthdr != NEXTHDR_AUTH_ &&
                nexthdr != NEXTHDR_DEST_)
                break;
            if (bpf_skb_load_bytes(skb, l4, ext, sizeof(ext)) < 0)
                return PARSE_MALFORMED;
            if (nexthdr == NEXTHDR_FRAGMENT_) {
                /* ext[2..3]: offset (13 bits) | res | M */
                if (((ext[2] << 8) | ext[3]) & 0xfff8)
                    pkt->has_l4 = 0;
                l4 += 8;
            } else if (nexthdr == NEXTHDR_AUTH_) {
                l4 += ((__u32)ext[1] + 2) * 4;
            } else {
                l4 += ((__u32)ext[1] + 1) * 8;
            }
            nexthdr = ext[0];
        }
        pkt->proto = nexthdr;
        pkt->l4off = l4;
        return PARSE_IP;
    }
    return PARSE_ALWAYS;
}

/* Reads ports / TCP flags / ICMP type; returns PARSE_*. */
static __always_inline int nw_parse_l4(struct __sk_buff *skb, struct nw_pkt *pkt)
{
    if (!pkt->has_l4)
        return PARSE_IP;
    __u8 proto = pkt->proto;
    if (proto == IPPROTO_TCP) {
        __u8 th[14];
        if (bpf_skb_load_bytes(skb, pkt->l4off, th, sizeof(th)) < 0)
            return PARSE_MALFORMED;
        pkt->sport = *(__u16 *)&th[0];
        pkt->dport = *(__u16 *)&th[2];
        pkt->tcp_flags = th[13];
        pkt->ported = 1;
    } else if (proto == IPPROTO_UDP || proto == IPPROTO_SCTP) {
        struct nw_l4ports p;
        if (bpf_skb_load_bytes(skb, pkt->l4off, &p, sizeof(p)) < 0)
            return PARSE_MALFORMED;
        pkt->sport = p.sport;
        pkt->dport = p.dport;
        pkt->ported = 1;
    } else if ((proto == IPPROTO_ICMP && pkt->family == 4) ||
               (proto == IPPROTO_ICMPV6 && pkt->family == 6)) {
        __u8 ih[8];
        if (bpf_skb_load_bytes(skb, pkt->l4off, ih, sizeof(ih)) < 0)
            return PARSE_MALFORMED;
        pkt->icmp_type = ih[0];
        pkt->icmp_code = ih[1];
        /* Echo request/reply: the identifier plays both ports, so the reply
         * finds the request's flow. Other ICMP: no ports. */
        if ((pkt->family == 4 && (ih[0] == 8 || ih[0] == 0)) ||
            (pkt->family == 6 && (ih[0] == 128 || ih[0] == 129))) {
            pkt->sport = *(__u16 *)&ih[4];
            pkt->dport = pkt->sport;
        }
    }
    return PARSE_IP;
}

static __always_inline int nw_is_icmp_error(const struct nw_pkt *pkt)
{
    if (!pkt->has_l4)
        return 0;
    if (pkt->family == 4 && pkt->proto == IPPROTO_ICMP)
        return pkt->icmp_type == 3 || pkt->icmp_type == 11 || pkt->icmp_type == 12;
    if (pkt->family == 6 && pkt->proto == IPPROTO_ICMPV6)
        return pkt->icmp_type >= 1 && pkt->icmp_type <= 4;
    return 0;
}

/* Is (a, ap) < (b, bp) in an arbitrary but total order? Only consistency
 * matters: both directions of a flow must pick the same "lo" endpoint. */
static __always_inline int nw_endpoint_lt(const __u32 *a, __u16 ap, const __u32 *b, __u16 bp)
{
#pragma unroll
    for (int i = 0; i < 4; i++) {
        if (a[i] != b[i])
            return a[i] < b[i];
    }
    return ap < bp;
}

/* Fills the normalized flow key; returns 1 when the packet's source is "lo". */
static __always_inline int nw_flow_key(struct nw_flow_key *k, __u32 iface, __u8 family, __u8 proto,
                                       const __u32 *saddr, __u16 sport, const __u32 *daddr,
                                       __u16 dport)
{
    k->iface = iface;
    k->family = family;
    k->proto = proto;
    k->pad = 0;
    int src_lo = nw_endpoint_lt(saddr, sport, daddr, dport);
    if (src_lo) {
        __builtin_memcpy(k->lo_addr, saddr, 16);
        __builtin_memcpy(k->hi_addr, daddr, 16);
        k->lo_port = sport;
        k->hi_port = dport;
    } else {
        __builtin_memcpy(k->lo_addr, daddr, 16);
        __builtin_memcpy(k->hi_addr, saddr, 16);
        k->lo_port = dport;
        k->hi_port = sport;
    }
    return src_lo;
}

static __always_inline void nw_count(__u32 iface, __u32 dir, __u8 verdict, __u32 len)
{
    struct nw_counter_key k = {};
    k.iface = iface;
    k.dir = dir;
    k.verdict = verdict;
    struct nw_counter_val *v = nw_counters.lookup(&k);
    if (!v) {
        struct nw_counter_val zero = {};
        nw_counters.insert(&k, &zero);
        v = nw_counters.lookup(&k);
        if (!v)
            return;
    }
    /* Per-CPU value: plain increments, no atomics. */
    v->packets += 1;
    v->bytes += len;
}

/* The verdict of one table: lpm(peers) & (lpm(ports) | any_proto_mask).
 * Returns 0 when allowed, else the NW_R_* reason of the drop. */
static __always_inline int nw_policy_denies(__u32 iface, __u32 dir, const struct nw_cfg_val *cfg,
                                            __u8 family, const __u32 *peer, __u8 proto,
                                            __u16 dport_be, int ported)
{
    struct nw_peer_key pk = {};
    pk.prefixlen = NW_PEER_FIXED_BITS + (family == 4 ? 32 : 128);
    pk.iface = iface;
    pk.gen = cfg->gen;
    pk.dir = dir;
    pk.family = family;
    __builtin_memcpy(pk.addr, peer, 16);
    if (family == 4) {
        /* Host bits past /32 must be zero to match the stored IPv4 keys. */
        __u32 *w = (__u32 *)pk.addr;
        w[1] = 0;
        w[2] = 0;
        w[3] = 0;
    }
    __u64 *classes = nw_peers.lookup(&pk);
    if (!classes)
        return NW_R_NO_RULE;
    __u64 peer_mask = *classes;
    /* The lowering gives an except block its own entry with the classes it
     * removes cleared: an empty mask means an except covers this peer. */
    if (!peer_mask)
        return NW_R_EXCEPT;
    if (peer_mask & cfg->any_proto_mask)
        return 0;
    struct nw_port_key qk = {};
    /* Protocols without ports look up prefixlen 0 only: a port entry must
     * never match them by accident of dport == 0. */
    qk.prefixlen = NW_PORT_FIXED_BITS + (ported ? 16 : 0);
    qk.iface = iface;
    qk.gen = cfg->gen;
    qk.dir = dir;
    qk.proto = proto;
    qk.port_be = ported ? dport_be : 0;
    __u64 *ports = nw_ports.lookup(&qk);
    return (ports && (peer_mask & *ports) != 0) ? 0 : NW_R_PORT;
}

static __always_inline struct nw_cfg_val *nw_cfg_of(__u32 iface, __u32 dir)
{
    struct nw_cfg_key ck = {};
    ck.iface = iface;
    ck.dir = dir;
    return nw_cfg.lookup(&ck);
}

static __always_inline __u64 nw_flow_timeout(__u8 proto, __u8 flags)
{
    if (proto == IPPROTO_TCP)
        return (flags & NW_FLOW_CLOSING) ? NW_FLOW_TIMEOUT_TCP_CLOSING_NS : NW_FLOW_TIMEOUT_TCP_NS;
    return NW_FLOW_TIMEOUT_OTHER_NS;
}

/* Does the table that admitted this flow (replaced since: another gen; or
 * changed in place: another epoch) still admit it? Re-checks the admitting
 * packet, reconstructed from the key. */
static __always_inline int nw_flow_still_admitted(const struct nw_flow_key *fk,
                                                  struct nw_flow_val *fv, __u32 dir,
                                                  struct nw_cfg_val *cur_cfg)
{
    __u32 adir = fv->admit_dir;
    struct nw_cfg_val *acfg = adir == dir ? cur_cfg : nw_cfg_of(fk->iface, adir);
    if (!acfg || !acfg->isolated)
        return 1;
    if ((acfg->gen == fv->admit_gen && acfg->epoch == fv->admit_epoch) ||
        (acfg->flags & NW_CFG_KEEP_ESTABLISHED))
        return 1;
    int src_lo = fv->flags & NW_FLOW_ORIG_SRC_IS_LO;
    /* Ingress judged the source, egress the destination. */
    int peer_is_lo = (adir == NW_DIR_INGRESS) ? src_lo : !src_lo;
    __u16 orig_dport = src_lo ? fk->hi_port : fk->lo_port;
    int ported = nw_is_ported(fk->proto);
    int ok = !nw_policy_denies(fk->iface, adir, acfg, fk->family,
                               peer_is_lo ? fk->lo_addr : fk->hi_addr, fk->proto,
                               orig_dport, ported);
    if (ok) {
        fv->admit_gen = acfg->gen;
        fv->admit_epoch = acfg->epoch;
    }
    return ok;
}

/* Is this ICMP error about a live flow (conntrack's RELATED)? Parses the
 * quoted header; the quoted packet is one the error's receiver sent. */
static __always_inline int nw_icmp_related(struct __sk_buff *skb, __u32 iface, __u32 dir,
                                           const struct nw_pkt *pkt, struct nw_cfg_val *cfg,
                                           __u64 now)
{
    struct nw_flow_key fk = {};
    __u32 inner = pkt->l4off + 8;
    __u32 isrc[4] = {}, idst[4] = {};
    __u8 iproto;
    __u32 il4;
    if (pkt->family == 4) {
        struct iphdr ip;
        if (bpf_skb_load_bytes(skb, inner, &ip, sizeof(ip)) < 0 || ip.ihl < 5)
            return 0;
        isrc[0] = ip.saddr;
        idst[0] = ip.daddr;
        iproto = ip.protocol;
        il4 = inner + ip.ihl * 4;
    } else {
        struct ipv6hdr ip6;
        if (bpf_skb_load_bytes(skb, inner, &ip6, sizeof(ip6)) < 0)
            return 0;
        __builtin_memcpy(isrc, &ip6.saddr, 16);
        __builtin_memcpy(idst, &ip6.daddr, 16);
        iproto = ip6.nexthdr; /* quoted extension headers are not skipped */
        il4 = inner + sizeof(ip6);
    }
    __u16 sp = 0, dp = 0;
    if (nw_is_ported(iproto)) {
        struct nw_l4ports p;
        if (bpf_skb_load_bytes(skb, il4, &p, sizeof(p)) < 0)
            return 0;
        sp = p.sport;
        dp = p.dport;
    } else if (iproto == IPPROTO_ICMP || iproto == IPPROTO_ICMPV6) {
        __u8 ih[8];
        if (bpf_skb_load_bytes(skb, il4, ih, sizeof(ih)) < 0)
            return 0;
        sp = *(__u16 *)&ih[4];
        dp = sp;
    }
    nw_flow_key(&fk, iface, pkt->family, iproto, isrc, sp, idst, dp);
    struct nw_flow_val *fv = nw_flows.lookup(&fk);
    if (!fv || now - fv->last_seen_ns > nw_flow_timeout(iproto, fv->flags))
        return 0;
    return nw_flow_still_admitted(&fk, fv, dir, cfg);
}

/* Drop records: only on the drop path, so allowed traffic never pays for
 * them. Per directed flow at most one record per configured interval (LRU of
 * last emits), then a global per-second cap; a full ring loses the record,
 * never the verdict. */
static __always_inline void nw_stat(__u32 slot)
{
    __u32 zero = 0;
    struct nw_event_stats *st = nw_evstats.lookup(&zero);
    if (st && slot < NW_N_EVENT_STATS)
        st->n[slot] += 1; /* per-CPU: no atomics */
}

static __always_inline void nw_drop_event(__u32 iface, __u32 dir, const struct nw_pkt *pkt,
                                          __u8 reason)
{
    __u32 zero = 0;
    struct nw_event_cfg *ec = nw_evcfg.lookup(&zero);
    if (!ec || !ec->enabled)
        return;
    __u64 now = bpf_ktime_get_ns();
    struct nw_event_flow_key ek = {};
    ek.iface = iface;
    ek.dir = dir;
    ek.family = pkt->family;
    ek.proto = pkt->proto;
    __builtin_memcpy(ek.saddr, pkt->saddr, 16);
    __builtin_memcpy(ek.daddr, pkt->daddr, 16);
    ek.sport = pkt->sport;
    ek.dport = pkt->dport;
    __u64 *last = nw_evseen.lookup(&ek);
    if (last && now - *last < ec->per_flow_interval_ns) {
        nw_stat(NW_EVS_FLOW_SUPPRESSED);
        return;
    }
    struct nw_event_window *w = nw_evwindow.lookup(&zero);
    if (!w)
        return;
    if (now - w->start_ns >= 1000000000ULL) {
        /* Racing CPUs may both reset: the cap can overshoot by one CPU's
         * worth for a window, never more. */
        w->start_ns = now;
        w->count = 0;
    }
    if (__sync_fetch_and_add(&w->count, 1) >= ec->max_per_sec) {
        nw_stat(NW_EVS_CAP_SUPPRESSED);
        return;
    }
    nw_evseen.update(&ek, &now);
    struct nw_drop_event *e = nw_events.ringbuf_reserve(sizeof(struct nw_drop_event));
    if (!e) {
        nw_stat(NW_EVS_RING_FULL);
        return;
    }
    e->ts_ns = now;
    e->iface = iface;
    e->dir = dir;
    e->verdict = NW_V_DROP_POLICY;
    e->reason = reason;
    e->family = pkt->family;
    e->proto = pkt->proto;
    e->pad[0] = 0;
    e->pad[1] = 0;
    e->pad[2] = 0;
    e->sport = pkt->sport;
    e->dport = pkt->dport;
    __builtin_memcpy(e->saddr, pkt->saddr, 16);
    __builtin_memcpy(e->daddr, pkt->daddr, 16);
    nw_events.ringbuf_submit(e, 0);
    nw_stat(NW_EVS_EMITTED);
}

int nw_policy(struct __sk_buff *skb)
{
    __u32 iface = skb->cb[0];
    __u32 dir = skb->cb[1];
    if (dir > NW_DIR_EGRESS)
        return NW_DROP; /* not entered through an entry program: fail closed */

    /* An interface whose last isolated direction just opened keeps its
     * filters for a while (a flapping selector then costs map writes, not
     * tc changes). With neither direction isolated it behaves as if it had
     * no filter at all: nothing parsed, no flow recorded. */
    struct nw_cfg_val *cfg = nw_cfg_of(iface, dir);
    int isolated = cfg && cfg->isolated;
    if (!isolated) {
        struct nw_cfg_val *other = nw_cfg_of(iface, dir ^ 1);
        if (!other || !other->isolated) {
            nw_count(iface, dir, NW_V_PASS_UNISOLATED, skb->len);
            return NW_PASS;
        }
    }

    struct nw_pkt pkt = {};
    __u32 off = ETH_HLEN;
    __be16 h_proto;
    if (bpf_skb_load_bytes(skb, 12, &h_proto, sizeof(h_proto)) < 0) {
        nw_count(iface, dir, NW_V_PASS_ALWAYS, skb->len);
        return NW_PASS; /* runt frame: nothing policy could say about it */
    }
    __u16 ethertype = bpf_ntohs(h_proto);
    /* Up to two in-band tags (802.1ad + 802.1Q); a hardware-accelerated
     * tag is already stripped into skb->vlan_tci and does not appear here. */
#pragma unroll
    for (int i = 0; i < 2; i++) {
        if (ethertype != ETH_P_8021Q_ && ethertype != ETH_P_8021AD_)
            break;
        if (bpf_skb_load_bytes(skb, off + 2, &h_proto, sizeof(h_proto)) < 0) {
            ethertype = 0; /* truncated tag: no payload to judge */
            break;
        }
        ethertype = bpf_ntohs(h_proto);
        off += 4;
    }

    int parsed;
    __u8 malformed_reason = NW_R_MALFORMED;
    if (ethertype == ETH_P_8021Q_ || ethertype == ETH_P_8021AD_ || ethertype == ETH_P_MPLS_UC_ ||
        ethertype == ETH_P_MPLS_MC_ || ethertype == ETH_P_PPP_SES_) {
        /* Encapsulations that carry IP past a parser that stops here (a
         * third tag, MPLS, PPPoE session): passing them as "non-IP" would
         * tunnel around the policy, so an isolated direction drops them. */
        parsed = PARSE_MALFORMED;
        malformed_reason = NW_R_NON_IP;
    } else {
        parsed = nw_parse_ip(skb, off, ethertype, &pkt);
    }
    if (parsed == PARSE_IP)
        parsed = nw_parse_l4(skb, &pkt);
    if (parsed == PARSE_ALWAYS) {
        /* ARP must pass for IPv4 to work at all; other non-IP ethertypes
         * (PTP, LLDP, ...) are outside the IP-only policy model, as with the
         * iptables-based reference implementation. */
        nw_count(iface, dir, NW_V_PASS_ALWAYS, skb->len);
        return NW_PASS;
    }

    if (parsed == PARSE_MALFORMED) {
        if (!isolated) {
            nw_count(iface, dir, NW_V_PASS_UNISOLATED, skb->len);
            return NW_PASS;
        }
        nw_count(iface, dir, NW_V_DROP_POLICY, skb->len);
        nw_drop_event(iface, dir, &pkt, malformed_reason);
        return NW_DROP;
    }

    /* IPv6 neighbour discovery (RS, RA, NS, NA, redirect: 133-137) always
     * passes: it is IPv6's ARP. So does MLD (130-132, 143): NS goes to a
     * solicited-node multicast group, and a switch doing MLD snooping stops
     * delivering it to a port whose listener reports were dropped. */
    if (pkt.family == 6 && pkt.proto == IPPROTO_ICMPV6 && pkt.has_l4 &&
        ((pkt.icmp_type >= 130 && pkt.icmp_type <= 137) || pkt.icmp_type == 143)) {
        nw_count(iface, dir, NW_V_PASS_ALWAYS, skb->len);
        return NW_PASS;
    }

    __u64 now = bpf_ktime_get_ns();
    /* A non-first fragment of a ported protocol has no ports, so it cannot
     * be tied to its flow: it is judged by protocol-wide entries alone. */
    int trackable = pkt.has_l4 || !nw_is_ported(pkt.proto);
    struct nw_flow_key fk = {};
    int src_lo = nw_flow_key(&fk, iface, pkt.family, pkt.proto, pkt.saddr, pkt.sport, pkt.daddr,
                             pkt.dport);
    __u8 closing = (pkt.proto == IPPROTO_TCP && (pkt.tcp_flags & 0x05)) ? NW_FLOW_CLOSING : 0;

    if (trackable) {
        struct nw_flow_val *fv = nw_flows.lookup(&fk);
        if (fv) {
            int syn_only = pkt.proto == IPPROTO_TCP && (pkt.tcp_flags & 0x12) == 0x02;
            int fresh = now - fv->last_seen_ns <= nw_flow_timeout(pkt.proto, fv->flags);
            /* A bare SYN on a closing flow is a new connection reusing the
             * tuple: it must face the current policy. */
            if (fresh && !(syn_only && (fv->flags & NW_FLOW_CLOSING)) &&
                nw_flow_still_admitted(&fk, fv, dir, cfg)) {
                if (closing && !(fv->flags & NW_FLOW_CLOSING)) {
                    fv->flags |= NW_FLOW_CLOSING;
                    fv->last_seen_ns = now;
                } else if (now - fv->last_seen_ns > NW_FLOW_TOUCH_NS) {
                    fv->last_seen_ns = now;
                }
                nw_count(iface, dir, NW_V_PASS_ESTABLISHED, skb->len);
                return NW_PASS;
            }
            nw_flows.delete(&fk);
        }
    }

    if (isolated && nw_is_icmp_error(&pkt) && nw_icmp_related(skb, iface, dir, &pkt, cfg, now)) {
        nw_count(iface, dir, NW_V_PASS_ESTABLISHED, skb->len);
        return NW_PASS;
    }

    __u8 verdict;
    if (!isolated) {
        verdict = NW_V_PASS_UNISOLATED;
    } else {
        int reason = nw_policy_denies(iface, dir, cfg, pkt.family,
                                      dir == NW_DIR_INGRESS ? pkt.saddr : pkt.daddr, pkt.proto,
                                      pkt.dport, pkt.ported);
        if (reason) {
            nw_count(iface, dir, NW_V_DROP_POLICY, skb->len);
            nw_drop_event(iface, dir, &pkt, reason);
            return NW_DROP;
        }
        verdict = NW_V_PASS_POLICY;
    }
    /* ICMP errors never open flows of their own; a RST/FIN does not either. */
    if (trackable && !closing && !nw_is_icmp_error(&pkt)) {
        struct nw_flow_val nv = {};
        nv.last_seen_ns = now;
        nv.admit_gen = cfg ? cfg->gen : 0;
        nv.admit_epoch = cfg ? cfg->epoch : 0;
        nv.admit_dir = dir;
        nv.flags = src_lo ? NW_FLOW_ORIG_SRC_IS_LO : 0;
        nw_flows.update(&fk, &nv);
    }
    nw_count(iface, dir, verdict, skb->len);
    return NW_PASS;
}
