/*
 * nicwarden-cni: the CNI plugin binary the runtime (or Multus) execs for every
 * pod attachment, installed as /opt/cni/bin/nicwarden. It holds no CNI logic
 * beyond answering VERSION: it sends {"env": {CNI_*}, "stdin": "<config>"} to
 * POST /v1/cni on the agent's unix socket and prints the answer byte for byte,
 * exiting with the code from X-CNI-Exit-Code.
 *
 * Static and libc-only, so nodes without any interpreter can run it.
 * The socket is the config's top-level "agentSocket", else
 * $NICWARDEN_CNI_SOCKET, else /run/nicwarden/cni.sock.
 *
 * Build: scripts/build-shim. The test build adds -DNICWARDEN_SCAN_MAIN, which
 * swaps main() for a harness that prints what the config scanner extracted.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define CURRENT_VERSION "1.1.0"
static const char *const SUPPORTED[] = {"0.3.1", "0.4.0", "1.0.0", "1.1.0"};
static const char *const COMMANDS[] = {"ADD", "DEL", "CHECK", "VERSION", "STATUS", "GC"};
#define NSUPPORTED (sizeof SUPPORTED / sizeof *SUPPORTED)
#define NCOMMANDS (sizeof COMMANDS / sizeof *COMMANDS)

#define DEFAULT_SOCKET "/run/nicwarden/cni.sock"
#define SOCKET_ENV "NICWARDEN_CNI_SOCKET"
#define TIMEOUT_ENV "NICWARDEN_CNI_TIMEOUT"
#define CONFIG_SOCKET_KEY "agentSocket"

/* The agent refuses requests over 1 MiB and answers why; reading up to 4 MiB
 * lets it say so, and bounds what a runaway writer can make us hold. */
#define STDIN_LIMIT (4u << 20)
#define REPLY_HEAD_LIMIT (64u << 10)
#define REPLY_BODY_LIMIT (4u << 20)
#define MAX_DEPTH 512
/* Long enough to ride out an agent restart, short enough that kubelet's own
 * retry takes over promptly. */
#define CONNECT_WINDOW_MS 3000
#define FIRST_BACKOFF_MS 50
#define CONNECT_TIMEOUT_MS 1000
/* An ADD may wait on IPAM and kernel work; kubelet cancels a sandbox request
 * after 2 minutes, and answering before that yields a readable error. */
#define RESPONSE_TIMEOUT_S 110

enum { INVALID_ENVIRONMENT = 4, IO_FAILURE = 5, DECODE_FAILURE = 6, INVALID_CONFIG = 7,
       TRY_AGAIN_LATER = 11, NOT_AVAILABLE = 50, INTERNAL = 999 };

struct buf { char *p; size_t len, cap; };

/* JSON's one-letter escapes: ESCAPES[i] stands for ESCAPED[i]. */
static const char ESCAPES[] = "\"\\/bfnrt", ESCAPED[] = "\"\\/\b\f\n\r\t";

static const char *g_version = CURRENT_VERSION; /* the version errors carry */
static long long g_timeout_ms = RESPONSE_TIMEOUT_S * 1000LL;

static int known(const char *s, const char *const *list, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!strcmp(s, list[i]))
            return 1;
    return 0;
}

static _Noreturn void out_of_memory(void)
{
    static const char msg[] = "{\"cniVersion\": \"" CURRENT_VERSION "\", \"code\": 999, "
                              "\"msg\": \"nicwarden shim: out of memory\"}\n";
    (void)!write(1, msg, sizeof msg - 1);
    _exit(1);
}

static void put(struct buf *b, const void *s, size_t n)
{
    if (n > b->cap - b->len) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap - b->len < n)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p)
            out_of_memory();
        b->p = p, b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
}

static void puts_(struct buf *b, const char *s) { put(b, s, strlen(s)); }

static void putf(struct buf *b, const char *fmt, ...)
{
    char tmp[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    put(b, tmp, n < 0 ? 0 : (size_t)n < sizeof tmp ? (size_t)n : sizeof tmp - 1);
}

/* Length of the well-formed UTF-8 sequence at p (strict: no overlongs,
 * surrogates or code points past U+10FFFF), or 0. With wtf8, an encoded
 * surrogate counts too: our own decoder writes lone ones that way. */
static size_t utf8_seq(const unsigned char *p, size_t n, int wtf8, unsigned *cp)
{
    unsigned c = p[0], lo = 0x80, hi = 0xBF;
    size_t len;
    if (c < 0x80)
        return *cp = c, 1;
    if (c >= 0xC2 && c <= 0xDF)
        len = 2, *cp = c & 0x1F;
    else if (c >= 0xE0 && c <= 0xEF) {
        len = 3, *cp = c & 0x0F;
        lo = c == 0xE0 ? 0xA0 : 0x80;
        hi = c == 0xED && !wtf8 ? 0x9F : 0xBF;
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4, *cp = c & 0x07;
        lo = c == 0xF0 ? 0x90 : 0x80;
        hi = c == 0xF4 ? 0x8F : 0xBF;
    } else
        return 0;
    if (n < len || p[1] < lo || p[1] > hi)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((p[i] & 0xC0) != 0x80)
            return 0;
        *cp = *cp << 6 | (p[i] & 0x3F);
    }
    return len;
}

static size_t utf8_invalid_at(const unsigned char *p, size_t n)
{
    unsigned cp;
    for (size_t i = 0; i < n;) {
        size_t k = utf8_seq(p + i, n - i, 0, &cp);
        if (!k)
            return i;
        i += k;
    }
    return n;
}

/* A JSON string for our own answers, as Python's json.dumps writes it
 * (ASCII only); bytes that are not UTF-8 become U+FFFD. */
static void put_ascii_json(struct buf *b, const char *s, size_t n)
{
    const unsigned char *p = (const unsigned char *)s;
    put(b, "\"", 1);
    for (size_t i = 0; i < n;) {
        unsigned cp;
        size_t k = utf8_seq(p + i, n - i, 1, &cp);
        if (!k)
            k = 1, cp = 0xFFFD;
        i += k;
        const char *esc = cp == '"' ? "\\\"" : cp == '\\' ? "\\\\" : cp == '\n' ? "\\n"
                        : cp == '\r' ? "\\r" : cp == '\t' ? "\\t" : cp == '\b' ? "\\b"
                        : cp == '\f' ? "\\f" : NULL;
        if (esc)
            puts_(b, esc);
        else if (cp >= 0x20 && cp < 0x7F)
            put(b, &(char){(char)cp}, 1);
        else if (cp < 0x10000)
            putf(b, "\\u%04x", cp);
        else
            putf(b, "\\u%04x\\u%04x", 0xD800 + ((cp - 0x10000) >> 10), 0xDC00 + (cp & 0x3FF));
    }
    put(b, "\"", 1);
}

/* A JSON string for the request: valid UTF-8 passes through unchanged. */
static void put_raw_json(struct buf *b, const char *s, size_t n)
{
    put(b, "\"", 1);
    for (size_t i = 0, from = 0; i <= n; i++) {
        unsigned char c = i < n ? (unsigned char)s[i] : 0;
        if (i < n && c >= 0x20 && c != '"' && c != '\\')
            continue;
        put(b, s + from, i - from);
        from = i + 1;
        if (i < n) {
            const char *esc = c && c != '/' ? strchr(ESCAPED, c) : NULL;
            if (esc)
                put(b, (char[]){'\\', ESCAPES[esc - ESCAPED]}, 2);
            else
                putf(b, "\\u%04x", c);
        }
    }
    put(b, "\"", 1);
}

static void write_all(int fd, const char *p, size_t n)
{
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return; /* the runtime stopped reading: nothing left to tell it */
        p += w, n -= (size_t)w;
    }
}

static _Noreturn void fail(int code, const char *details, const char *fmt, ...)
{
    char msg[8192];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    struct buf b = {0};
    puts_(&b, "{\n    \"cniVersion\": ");
    put_ascii_json(&b, g_version, strlen(g_version));
    putf(&b, ",\n    \"code\": %d,\n    \"msg\": ", code);
    put_ascii_json(&b, msg, n < 0 ? 0 : (size_t)n < sizeof msg ? (size_t)n : sizeof msg - 1);
    if (details) {
        puts_(&b, ",\n    \"details\": ");
        put_ascii_json(&b, details, strlen(details));
    }
    puts_(&b, "\n}\n");
    write_all(1, b.p, b.len);
    exit(1);
}

/* ------------------------------------------------------------ config scan */

/* Just enough JSON to find two top-level keys, and to refuse what Python's
 * json module refuses (so the agent's parser is never the first to object). */
enum kind { ABSENT, STRING, JNULL, OTHER };
struct field { enum kind kind; const unsigned char *s; size_t n; }; /* s: escaped text */
struct scan { const unsigned char *p, *end; const char *why; };

static int bad(struct scan *s, const char *why) { return s->why = why, -1; }

static void ws(struct scan *s)
{
    while (s->p < s->end && (*s->p == ' ' || *s->p == '\t' || *s->p == '\n' || *s->p == '\r'))
        s->p++;
}

static int hex4(const unsigned char *p, unsigned *v)
{
    *v = 0;
    for (int i = 0; i < 4; i++) {
        unsigned c = p[i], d = c - '0' < 10 ? c - '0' : (c | 32) - 'a' < 6 ? (c | 32) - 'a' + 10 : 99;
        if (d > 15)
            return -1;
        *v = *v << 4 | d;
    }
    return 0;
}

static int string(struct scan *s, struct field *f)
{
    const unsigned char *start = ++s->p;
    unsigned v;
    while (s->p < s->end) {
        unsigned char c = *s->p;
        if (c == '"') {
            f->kind = STRING, f->s = start, f->n = (size_t)(s->p++ - start);
            return 0;
        }
        if (c < 0x20)
            return bad(s, "control character in a string");
        if (c == '\\') {
            if (++s->p == s->end)
                break;
            if (*s->p == 'u') {
                if (s->end - s->p < 5 || hex4(s->p + 1, &v))
                    return bad(s, "invalid \\uXXXX escape");
                s->p += 4;
            } else if (!*s->p || !strchr(ESCAPES, *s->p))
                return bad(s, "invalid escape");
        }
        s->p++;
    }
    return bad(s, "unterminated string");
}

static int digits(struct scan *s)
{
    const unsigned char *from = s->p;
    while (s->p < s->end && (unsigned)(*s->p - '0') < 10)
        s->p++;
    return s->p > from;
}

static int literal(struct scan *s, const char *word)
{
    size_t n = strlen(word);
    if ((size_t)(s->end - s->p) < n || memcmp(s->p, word, n))
        return bad(s, "expecting a value");
    s->p += n;
    return 0;
}

static int number(struct scan *s)
{
    if (*s->p == '-' && ++s->p < s->end && *s->p == 'I')
        return literal(s, "Infinity");
    if (s->p < s->end && *s->p == '0')
        s->p++;
    else if (!digits(s))
        return bad(s, "expecting a value");
    /* A '.' or 'e' not followed by digits is left for the caller to refuse. */
    if (s->end - s->p > 1 && s->p[0] == '.' && (unsigned)(s->p[1] - '0') < 10)
        s->p++, digits(s);
    if (s->p < s->end && (*s->p | 32) == 'e') {
        const unsigned char *at = s->p++;
        if (s->p < s->end && (*s->p == '+' || *s->p == '-'))
            s->p++;
        if (!digits(s))
            s->p = at;
    }
    return 0;
}

static int key_is(const struct field *k, const char *name)
{
    const unsigned char *p = k->s, *end = k->s + k->n;
    unsigned v;
    for (; p < end; name++) {
        if (*p != '\\')
            v = *p++;
        else if (p[1] == 'u')
            hex4(p + 2, &v), p += 6;
        else
            v = (unsigned char)ESCAPED[strchr(ESCAPES, p[1]) - ESCAPES], p += 2;
        if (!*name || v != (unsigned char)*name)
            return 0;
    }
    return !*name;
}

static int value(struct scan *s, int depth, struct field *f, struct field *sock, struct field *ver);

static int container(struct scan *s, int depth, struct field *sock, struct field *ver)
{
    unsigned char close = *s->p++ == '{' ? '}' : ']';
    ws(s);
    if (s->p < s->end && *s->p == close)
        return s->p++, 0;
    for (;;) {
        struct field key, scratch, *dst = &scratch;
        if (close == '}') {
            if (s->p == s->end || *s->p != '"')
                return bad(s, "expecting a property name in double quotes");
            if (string(s, &key))
                return -1;
            ws(s);
            if (s->p == s->end || *s->p++ != ':')
                return bad(s, "expecting ':' after a property name");
            ws(s);
            /* Only the top level's keys count; the last duplicate wins, as in Python. */
            if (sock && key_is(&key, CONFIG_SOCKET_KEY))
                dst = sock;
            else if (ver && key_is(&key, "cniVersion"))
                dst = ver;
        }
        if (value(s, depth, dst, NULL, NULL))
            return -1;
        ws(s);
        if (s->p < s->end && *s->p == ',') {
            s->p++, ws(s);
            continue;
        }
        if (s->p < s->end && *s->p == close)
            return s->p++, 0;
        return bad(s, close == '}' ? "expecting ',' or '}'" : "expecting ',' or ']'");
    }
}

static int value(struct scan *s, int depth, struct field *f, struct field *sock, struct field *ver)
{
    if (s->p == s->end)
        return bad(s, "expecting a value");
    f->kind = OTHER;
    switch (*s->p) {
    case '"': return string(s, f);
    case '{':
    case '[':
        if (depth >= MAX_DEPTH)
            return bad(s, "nested more than 512 deep");
        return container(s, depth + 1, sock, ver);
    case 'n': f->kind = JNULL; return literal(s, "null");
    case 't': return literal(s, "true");
    case 'f': return literal(s, "false");
    case 'N': return literal(s, "NaN");
    case 'I': return literal(s, "Infinity");
    default: return number(s);
    }
}

/* The config's text is JSON, with at most one top-level value. Returns NULL
 * or why not, and where. */
static const char *scan_config(const unsigned char *p, size_t n, struct field *sock,
                               struct field *ver, size_t *at)
{
    struct scan s = {p, p + n, NULL};
    struct field top;
    sock->kind = ver->kind = ABSENT;
    ws(&s);
    int is_object = s.p < s.end && *s.p == '{';
    if (value(&s, 0, &top, is_object ? sock : NULL, is_object ? ver : NULL) == 0) {
        ws(&s);
        if (s.p != s.end)
            bad(&s, "extra data after the JSON value");
    }
    if (s.why)
        sock->kind = ver->kind = ABSENT; /* what a broken config says is not taken */
    *at = (size_t)(s.p - p);
    return s.why;
}

/* A scanned string's value; a lone surrogate is kept as its 3-byte form. */
static char *decode(const struct field *f, size_t *len)
{
    char *out = malloc(f->n + 1), *o = out;
    if (!out)
        out_of_memory();
    for (const unsigned char *p = f->s, *end = f->s + f->n; p < end;) {
        unsigned v;
        if (*p != '\\') {
            *o++ = (char)*p++;
            continue;
        }
        if (p[1] != 'u') {
            *o++ = ESCAPED[strchr(ESCAPES, p[1]) - ESCAPES], p += 2;
            continue;
        }
        hex4(p + 2, &v), p += 6;
        unsigned lo;
        if (v >= 0xD800 && v < 0xDC00 && end - p >= 6 && p[0] == '\\' && p[1] == 'u' &&
            !hex4(p + 2, &lo) && lo >= 0xDC00 && lo < 0xE000)
            v = 0x10000 + ((v - 0xD800) << 10) + (lo - 0xDC00), p += 6;
        if (v < 0x80)
            *o++ = (char)v;
        else if (v < 0x800)
            *o++ = (char)(0xC0 | v >> 6), *o++ = (char)(0x80 | (v & 0x3F));
        else if (v < 0x10000)
            *o++ = (char)(0xE0 | v >> 12), *o++ = (char)(0x80 | (v >> 6 & 0x3F)),
            *o++ = (char)(0x80 | (v & 0x3F));
        else
            *o++ = (char)(0xF0 | v >> 18), *o++ = (char)(0x80 | (v >> 12 & 0x3F)),
            *o++ = (char)(0x80 | (v >> 6 & 0x3F)), *o++ = (char)(0x80 | (v & 0x3F));
    }
    *o = 0;
    *len = (size_t)(o - out);
    return out;
}

/* For labelling an error with the caller's version when the JSON is broken
 * elsewhere: the first "cniVersion" : "<no quote or backslash>". */
static char *find_version(const char *text, size_t n)
{
    static const char key[] = "\"cniVersion\"";
    const char *end = text + n;
    for (const char *p = text; (p = memmem(p, (size_t)(end - p), key, sizeof key - 1)); p++) {
        const char *q = p + sizeof key - 1;
        for (int colon = 0; colon < 2; colon++) {
            while (q < end && (strchr(" \t\n\r\f\v", *q) || (*q >= 0x1C && *q <= 0x1F)) && *q)
                q++;
            if (q == end || *q != (colon ? '"' : ':'))
                break;
            q++;
            if (!colon)
                continue;
            const char *v = q;
            while (q < end && *q != '"' && *q != '\\')
                q++;
            if (q < end && *q == '"')
                return strndup(v, (size_t)(q - v));
        }
    }
    return NULL;
}

#ifndef NICWARDEN_SCAN_MAIN
/* -------------------------------------------------------------- transport */

static long long now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long long)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

static int wait_fd(int fd, short events, long long deadline)
{
    for (;;) {
        long long left = deadline - now_ms();
        struct pollfd pfd = {fd, events, 0};
        int r = poll(&pfd, 1, left <= 0 ? 0 : left > 60000 ? 60000 : (int)left);
        if (r > 0)
            return pfd.revents;
        if (r < 0 && errno != EINTR)
            return POLLERR;
        if (r == 0 && deadline - now_ms() <= 0)
            return 0;
    }
}

enum source { FROM_CONFIG, FROM_ENV, FROM_DEFAULT };
struct target { const char *path; enum source source; };

static _Noreturn void bad_socket(const struct target *t, const char *why)
{
    if (t->source == FROM_CONFIG)
        fail(INVALID_CONFIG, NULL, CONFIG_SOCKET_KEY ": %s %s", t->path, why);
    if (t->source == FROM_ENV)
        fail(INVALID_ENVIRONMENT, NULL, SOCKET_ENV ": %s %s", t->path, why);
    fail(IO_FAILURE, NULL, "cannot connect to the nicwarden agent at %s: it %s", t->path, why);
}

/* A connected socket, or -1 with why the agent could not take a request now. */
static int connect_agent(const struct target *t, char *why, size_t why_len)
{
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    memcpy(addr.sun_path, t->path, strlen(t->path) + 1);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        fail(IO_FAILURE, NULL, "cannot create a unix socket: [Errno %d] %s", errno, strerror(errno));
    int err = connect(fd, (struct sockaddr *)&addr, sizeof addr) ? errno : 0;
    if (err == EINPROGRESS || err == EINTR) {
        if (!wait_fd(fd, POLLOUT, now_ms() + CONNECT_TIMEOUT_MS)) {
            close(fd);
            snprintf(why, why_len, "connecting timed out");
            return -1;
        }
        socklen_t len = sizeof err;
        getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
    }
    if (!err)
        return fd;
    close(fd);
    struct stat st;
    if (err == ENOTDIR || (err == ECONNREFUSED && stat(t->path, &st) == 0 && !S_ISSOCK(st.st_mode)))
        bad_socket(t, "is not a socket");
    if (err != ENOENT && err != ECONNREFUSED && err != EAGAIN)
        fail(IO_FAILURE, NULL, "cannot connect to the nicwarden agent at %s: [Errno %d] %s%s",
             t->path, err, strerror(err), err == EACCES ? " (the shim must run as root)" : "");
    snprintf(why, why_len, "%s", strerror(err));
    return -1;
}

/* Sends the request; stops early, without error, if the agent answers (or
 * hangs up) first: it refuses an oversized request before reading it. */
static int send_request(int fd, const char *p, size_t n, long long deadline)
{
    while (n) {
        int ev = wait_fd(fd, POLLOUT | POLLIN, deadline);
        if (!ev)
            return ETIMEDOUT;
        if (ev & (POLLIN | POLLHUP | POLLERR))
            return 0;
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w < 0 && (errno == EAGAIN || errno == EINTR))
            continue;
        if (w < 0)
            return errno == EPIPE || errno == ECONNRESET ? 0 : errno;
        p += w, n -= (size_t)w;
    }
    return 0;
}

struct reply { int status, exit_code; const char *body; size_t body_len; };

static _Noreturn void no_answer(int err)
{
    if (err == ETIMEDOUT)
        fail(TRY_AGAIN_LATER, NULL, "the nicwarden agent did not answer within %g s",
             (double)g_timeout_ms / 1000);
    fail(TRY_AGAIN_LATER, NULL, "the connection to the nicwarden agent failed: [Errno %d] %s", err,
         strerror(err));
}

/* 1 while more is wanted, 0 at EOF; fails on errors. */
static int receive(int fd, struct buf *b, long long deadline)
{
    char chunk[65536];
    for (;;) {
        if (!wait_fd(fd, POLLIN, deadline))
            no_answer(ETIMEDOUT);
        ssize_t r = recv(fd, chunk, sizeof chunk, MSG_DONTWAIT);
        if (r > 0)
            return put(b, chunk, (size_t)r), 1;
        if (r == 0)
            return 0;
        if (errno != EAGAIN && errno != EINTR)
            no_answer(errno);
    }
}

static int blank(char c) { return c && strchr(" \t\r\n\f\v", c); }

static char *trim(char *s, char *end)
{
    while (s < end && blank(*s))
        s++;
    while (end > s && blank(end[-1]))
        end--;
    *end = 0;
    return s;
}

/* Parses a whole number of at most `max`, or -1. */
static long long whole(const char *s, long long max)
{
    long long v = 0;
    if (!*s)
        return -1;
    for (; *s; s++)
        if (*s < '0' || *s > '9' || (v = v * 10 + (*s - '0')) > max)
            return -1;
    return v;
}

static void read_reply(int fd, long long deadline, int send_err, struct reply *r)
{
    struct buf b = {0};
    char *head_end;
    while (!b.len || !(head_end = memmem(b.p, b.len, "\r\n\r\n", 4))) {
        if (b.len > REPLY_HEAD_LIMIT)
            fail(INTERNAL, NULL, "the nicwarden agent's answer has more than %u bytes of headers",
                 REPLY_HEAD_LIMIT);
        if (!receive(fd, &b, deadline)) {
            if (send_err)
                no_answer(send_err);
            fail(TRY_AGAIN_LATER, NULL, "the nicwarden agent closed the connection unanswered");
        }
    }
    *head_end = 0;
    char *line = b.p, *eol = strstr(line, "\r\n");
    if (eol)
        *eol = 0;
    char *sp = strchr(line, ' '), *code_end = sp ? strchr(sp + 1, ' ') : NULL;
    if (code_end)
        *code_end = 0;
    r->status = strncmp(line, "HTTP/", 5) || !sp ? -1 : (int)whole(sp + 1, 999999999);
    if (code_end)
        *code_end = ' ';
    if (r->status < 0)
        fail(INTERNAL, NULL, "the nicwarden agent sent a malformed status line: '%.200s'", line);
    long long length = -1;
    r->exit_code = -1;
    while (eol) {
        line = eol + 2;
        eol = strstr(line, "\r\n");
        char *end = eol ? eol : head_end, *colon = memchr(line, ':', (size_t)(end - line));
        if (!colon)
            continue;
        char *name = trim(line, colon), *val = trim(colon + 1, end);
        if (!strcasecmp(name, "content-length"))
            length = whole(val, (long long)1 << 40);
        else if (!strcasecmp(name, "x-cni-exit-code"))
            r->exit_code = (int)whole(val, 255);
    }
    if (length < 0)
        fail(INTERNAL, NULL, "the nicwarden agent's answer has no Content-Length");
    if (length > REPLY_BODY_LIMIT)
        fail(INTERNAL, NULL, "the nicwarden agent's answer is larger than %u bytes", REPLY_BODY_LIMIT);
    size_t start = (size_t)(head_end + 4 - b.p);
    while (b.len - start < (size_t)length)
        if (!receive(fd, &b, deadline))
            fail(TRY_AGAIN_LATER, NULL, "the nicwarden agent's answer was cut short");
    r->body = b.p + start;
    r->body_len = (size_t)length;
}

static _Noreturn void unreachable(const char *command, const char *path, const char *why)
{
    if (!strcmp(command, "DEL")) {
        /* Never a silent success: that would let the runtime forget a VF that
         * is still attached. An error makes kubelet retry the DEL later. */
        const char *cid = getenv("CNI_CONTAINERID"), *ifname = getenv("CNI_IFNAME");
        fail(TRY_AGAIN_LATER, "DEL must be retried once the agent is running",
             "could not confirm that attachment %s/%s was removed: the nicwarden agent is not "
             "reachable at %s (%s)", cid ? cid : "?", ifname ? ifname : "?", path, why);
    }
    /* A runtime reads a STATUS failure as 50/51: cannot serve ADD now. */
    fail(strcmp(command, "STATUS") ? TRY_AGAIN_LATER : NOT_AVAILABLE, NULL,
         "the nicwarden agent is not reachable at %s (%s)", path, why);
}

static int same_name(const char *x, const char *y)
{
    size_t n = strcspn(x, "=");
    return n == strcspn(y, "=") && !memcmp(x, y, n);
}

static int by_name(const void *a, const void *b)
{
    const char *x = *(char *const *)a, *y = *(char *const *)b;
    size_t nx = strcspn(x, "="), ny = strcspn(y, "=");
    int c = memcmp(x, y, nx < ny ? nx : ny);
    return c ? c : nx < ny ? -1 : nx > ny;
}

/* {"env": {CNI_*, sorted}, "stdin": "<config>"} */
static void build_body(struct buf *b, const char *stdin_text, size_t n)
{
    extern char **environ;
    size_t count = 0, k = 0;
    for (char **e = environ; *e; e++)
        count += !strncmp(*e, "CNI_", 4) && strchr(*e, '=');
    char **vars = malloc((count + 1) * sizeof *vars);
    if (!vars)
        out_of_memory();
    for (char **e = environ; *e; e++) {
        if (strncmp(*e, "CNI_", 4) || !strchr(*e, '='))
            continue;
        size_t i = 0;
        while (i < k && !same_name(vars[i], *e))
            i++;
        if (i == k) /* of duplicates, the first: what getenv() and the runtime see */
            vars[k++] = *e;
    }
    count = k;
    qsort(vars, count, sizeof *vars, by_name);
    puts_(b, "{\"env\":{");
    for (size_t i = 0; i < count; i++) {
        size_t name_len = strcspn(vars[i], "="), len = strlen(vars[i]);
        if (utf8_invalid_at((const unsigned char *)vars[i], len) < len)
            fail(INVALID_ENVIRONMENT, NULL, "%.*s: not UTF-8", (int)name_len, vars[i]);
        if (b->p[b->len - 1] != '{')
            put(b, ",", 1);
        put_raw_json(b, vars[i], name_len);
        put(b, ":", 1);
        put_raw_json(b, vars[i] + name_len + 1, len - name_len - 1);
    }
    free(vars);
    puts_(b, "},\"stdin\":");
    put_raw_json(b, stdin_text, n);
    put(b, "}", 1);
}

static int forward(const char *command, const struct target *t, const char *body, size_t n)
{
    struct buf req = {0};
    /* X-CNI-Version lets the agent label an error it gives before reading the body. */
    putf(&req, "POST /v1/cni HTTP/1.1\r\nHost: nicwarden-agent\r\nContent-Type: application/json\r\n"
               "Content-Length: %zu\r\nX-CNI-Version: %s\r\nConnection: close\r\n\r\n",
         n, known(g_version, SUPPORTED, NSUPPORTED) ? g_version : CURRENT_VERSION);
    put(&req, body, n);
    long long window_end = now_ms() + CONNECT_WINDOW_MS, delay = FIRST_BACKOFF_MS;
    char why[256];
    struct reply r;
    for (;;) {
        int fd = connect_agent(t, why, sizeof why);
        if (fd >= 0) {
            /* From here the agent may be acting on the request, so nothing is
             * retried: a second ADD is not allowed. Only 503 says it was not run. */
            long long deadline = now_ms() + g_timeout_ms;
            int send_err = send_request(fd, req.p, req.len, deadline);
            if (send_err == ETIMEDOUT)
                no_answer(ETIMEDOUT);
            if (send_err && send_err != EPIPE && send_err != ECONNRESET)
                no_answer(send_err);
            read_reply(fd, deadline, send_err, &r);
            close(fd);
            if (r.status != 503)
                break;
            snprintf(why, sizeof why, "the agent is not ready");
        }
        long long left = window_end - now_ms();
        if (left <= 0)
            unreachable(command, t->path, why);
        long long nap = delay < left ? delay : left;
        nanosleep(&(struct timespec){nap / 1000, nap % 1000 * 1000000}, NULL);
        delay *= 2;
    }
    /* The agent refuses a request it will never take (an oversized one) with
     * a CNI error of its own; any other non-200 is a fault on its side. */
    if (r.status != 200 && r.exit_code < 0) {
        size_t shown = r.body_len < 4096 ? r.body_len : 4096;
        char *text = strndup(r.body, shown);
        if (!text)
            out_of_memory();
        text = trim(text, text + strlen(text));
        fail(INTERNAL, NULL, "the nicwarden agent answered HTTP %d: %s", r.status, text);
    }
    if (r.exit_code < 0)
        fail(INTERNAL, NULL, "the nicwarden agent's answer has no valid x-cni-exit-code");
    write_all(1, r.body, r.body_len);
    return r.exit_code;
}

/* ------------------------------------------------------------------- main */

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    const char *command = getenv("CNI_COMMAND");
    command = command ? command : "";

    /* stdin, bounded: one byte past the limit says it was exceeded. */
    struct buf in = {0};
    put(&in, "", 1), in.len = 0;
    for (;;) {
        char chunk[65536];
        ssize_t r = read(0, chunk, sizeof chunk);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0 && errno != EBADF)
            fail(IO_FAILURE, NULL, "reading the network config from stdin: [Errno %d] %s", errno,
                 strerror(errno));
        if (r <= 0)
            break;
        put(&in, chunk, (size_t)r);
        if (in.len > STDIN_LIMIT)
            break;
    }
    const unsigned char *text = (const unsigned char *)in.p;
    struct field sock, ver;
    size_t at = utf8_invalid_at(text, in.len);
    char decode_error[160] = "";
    if (in.len > STDIN_LIMIT)
        sock.kind = ver.kind = ABSENT;
    else if (at < in.len) {
        sock.kind = ver.kind = ABSENT;
        snprintf(decode_error, sizeof decode_error,
                 "not UTF-8: byte 0x%02x at offset %zu cannot start or continue a character",
                 text[at], at);
    } else {
        const char *why = scan_config(text, in.len, &sock, &ver, &at);
        if (why)
            snprintf(decode_error, sizeof decode_error, "%s at byte %zu", why, at);
    }
    int undecodable = in.len > STDIN_LIMIT || *decode_error;
    size_t len;
    char *found = ver.kind == STRING ? decode(&ver, &len)
                : undecodable ? find_version(in.p, in.len > STDIN_LIMIT ? STDIN_LIMIT : in.len)
                              : NULL;
    if (found)
        g_version = found;

    if (!strcmp(command, "VERSION")) {
        /* Echo the caller's version when we speak it, else offer our newest. */
        struct buf out = {0};
        puts_(&out, "{\n    \"cniVersion\": ");
        int echo = ver.kind == STRING && known(found, SUPPORTED, NSUPPORTED);
        const char *chosen = echo ? found : CURRENT_VERSION;
        put_ascii_json(&out, chosen, strlen(chosen));
        puts_(&out, ",\n    \"supportedVersions\": [");
        for (size_t i = 0; i < NSUPPORTED; i++)
            putf(&out, "%s\n        \"%s\"", i ? "," : "", SUPPORTED[i]);
        puts_(&out, "\n    ]\n}\n");
        write_all(1, out.p, out.len);
        return 0;
    }
    if (!*command)
        fail(INVALID_ENVIRONMENT, NULL, "missing environment variables: CNI_COMMAND");
    if (!known(command, COMMANDS, NCOMMANDS))
        fail(INVALID_ENVIRONMENT, NULL, "unknown CNI_COMMAND: %s", command);
    if (in.len > STDIN_LIMIT)
        fail(INVALID_CONFIG, NULL, "the network config on stdin is larger than %u bytes", STDIN_LIMIT);
    if (*decode_error)
        fail(DECODE_FAILURE, NULL, "decoding the network config from stdin: %s", decode_error);

    struct target t = {getenv(SOCKET_ENV), FROM_ENV};
    if (sock.kind == STRING) {
        t.path = decode(&sock, &len), t.source = FROM_CONFIG;
        if (strlen(t.path) != len || utf8_invalid_at((const unsigned char *)t.path, len) < len)
            fail(INVALID_CONFIG, NULL, CONFIG_SOCKET_KEY ": must be an absolute path to a socket");
    } else if (sock.kind == OTHER)
        fail(INVALID_CONFIG, NULL, CONFIG_SOCKET_KEY ": must be an absolute path to a socket, "
             "got a value that is not a string");
    else if (!t.path || !*t.path)
        t.path = DEFAULT_SOCKET, t.source = FROM_DEFAULT;
    if (t.path[0] != '/')
        bad_socket(&t, "is not an absolute path to a socket");
    if (strlen(t.path) >= sizeof((struct sockaddr_un *)0)->sun_path)
        bad_socket(&t, "is longer than a unix socket path may be (107 bytes)");

    const char *raw = getenv(TIMEOUT_ENV);
    if (raw && *raw) {
        char *end;
        double s = strtod(raw, &end);
        if (*end || !(s > 0 && s <= RESPONSE_TIMEOUT_S))
            fail(INVALID_ENVIRONMENT, NULL,
                 TIMEOUT_ENV ": must be seconds, above 0 and at most %d, got '%s'",
                 RESPONSE_TIMEOUT_S, raw);
        g_timeout_ms = (long long)(s * 1000) > 0 ? (long long)(s * 1000) : 1;
    }
    struct buf body = {0};
    build_body(&body, in.p, in.len);
    return forward(command, &t, body.p, body.len);
}

#else
/* Test harness: length-prefixed configs on stdin ("<n>\n<bytes>"); one JSON
 * line each on stdout with what the scanner found. */
static void report(struct buf *b, const char *name, const struct field *f)
{
    size_t len;
    if (f->kind == ABSENT)
        return;
    putf(b, ",\"%s\":", name);
    if (f->kind == STRING) {
        char *v = decode(f, &len);
        put(b, "[\"string\",", 10), put_ascii_json(b, v, len), put(b, "]", 1);
        free(v);
    } else
        puts_(b, f->kind == JNULL ? "[\"null\"]" : "[\"other\"]");
}

int main(void)
{
    size_t n;
    while (scanf("%zu", &n) == 1 && getchar() == '\n') {
        unsigned char *p = malloc(n + 1);
        if (!p || fread(p, 1, n, stdin) != n)
            return 2;
        struct field sock, ver;
        size_t at = utf8_invalid_at(p, n);
        const char *why = at < n ? "not UTF-8" : scan_config(p, n, &sock, &ver, &at);
        struct buf b = {0};
        putf(&b, "{\"ok\":%s", why ? "false" : "true");
        if (!why)
            report(&b, "agentSocket", &sock), report(&b, "cniVersion", &ver);
        char *v = find_version((const char *)p, n);
        if (v)
            puts_(&b, ",\"fallbackVersion\":"), put_ascii_json(&b, v, strlen(v));
        puts_(&b, "}\n");
        fwrite(b.p, 1, b.len, stdout);
        free(b.p), free(p), free(v);
    }
    return 0;
}
#endif
