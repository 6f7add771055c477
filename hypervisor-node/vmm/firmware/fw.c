/*
 * Atrium's test firmware: a tiny freestanding guest program for the builtin VMM's tests.
 *
 * It runs in 64-bit long mode at CPL 3 (under PVM, guest user mode runs natively while guest
 * kernel mode is emulated), uses port I/O (IOPL 3) and polls its devices instead of taking
 * interrupts. It
 *  - prints on COM1,
 *  - draws a known pattern into the top half of the framebuffer,
 *  - drives every virtio-mmio device it finds: virtio-input (prints each event and draws a
 *    block per key press), virtio-blk (reads sector 0, writes sector 1) and the multiport
 *    virtio-console agent port (hello, ready, pong),
 *  - writes to the idle port when there is nothing to do, so an idle guest costs little.
 *
 * The boot info layout and the pattern are mirrored in the VMM crate (src/firmware.rs).
 */

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;

#define BOOT_MAGIC 0x31304d5746525441ULL /* "ATRFWM01" */

struct boot_info {
    u64 magic;
    u64 fb_addr;
    u32 fb_width;
    u32 fb_height;
    u32 fb_stride;
    u32 virtio_count;
    u64 virtio_base;
    u32 virtio_stride;
    u32 flags;
};

#define COM1 0x3f8
#define IDLE_PORT 0xf5

static inline void outb(u16 port, u8 v) { __asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port)); }
static inline void barrier(void) { __asm__ volatile("" : : : "memory"); }

static inline u32 rd32(u64 a) { return *(volatile u32 *)a; }
static inline void wr32(u64 a, u32 v) { *(volatile u32 *)a = v; }
static inline u8 rd8(u64 a) { return *(volatile u8 *)a; }

/* ---- serial ---- */

static void putc(char c) { outb(COM1, (u8)c); }
static void puts(const char *s) { while (*s) putc(*s++); }
static void putdec(u64 v)
{
    char b[24];
    int i = 0;
    do { b[i++] = (char)('0' + v % 10); v /= 10; } while (v);
    while (i) putc(b[--i]);
}
static void putsdec(long long v)
{
    if (v < 0) { putc('-'); putdec((u64)(-v)); } else putdec((u64)v);
}

/* Global: the compiler may emit calls to these for struct copies. */
void *memset(void *d, int c, u64 n);
void *memcpy(void *d, const void *s, u64 n);

void *memset(void *d, int c, u64 n)
{
    volatile u8 *p = d;
    while (n--) *p++ = (u8)c;
    return d;
}
void *memcpy(void *d, const void *s, u64 n)
{
    volatile u8 *p = d;
    const volatile u8 *q = s;
    while (n--) *p++ = *q++;
    return d;
}
static u64 strlen(const char *s) { u64 n = 0; while (s[n]) n++; return n; }

/* ---- framebuffer ---- */

static struct boot_info *bi;

static void fb_put(u32 x, u32 y, u32 rgb)
{
    *(volatile u32 *)(bi->fb_addr + (u64)y * bi->fb_stride + (u64)x * 4) = rgb;
}

/* The pattern of the top half; src/firmware.rs computes the same function. */
static u32 pattern(u32 x, u32 y, u32 w, u32 h)
{
    u32 r = (x * 255) / (w - 1);
    u32 g = (y * 255) / (h - 1);
    u32 b = (x ^ y) & 0xff;
    return (r << 16) | (g << 8) | b;
}

static void draw_pattern(void)
{
    u32 w = bi->fb_width, h = bi->fb_height;
    for (u32 y = 0; y < h / 2; y++)
        for (u32 x = 0; x < w; x++)
            fb_put(x, y, pattern(x, y, w, h));
}

/* A 16x16 block per key code in the bottom half: white while down, grey after release. */
static void draw_key(u32 code, int down)
{
    u32 cols = bi->fb_width / 16;
    u32 x0 = (code % cols) * 16, y0 = bi->fb_height / 2 + (code / cols) * 16;
    if (y0 + 16 > bi->fb_height) return;
    u32 rgb = down ? 0x00ffffff : 0x00404040;
    for (u32 y = y0; y < y0 + 16; y++)
        for (u32 x = x0; x < x0 + 16; x++)
            fb_put(x, y, rgb);
}

/* ---- virtio-mmio ---- */

#define VIRTIO_MAGIC 0x74726976
#define R_MAGIC 0x000
#define R_VERSION 0x004
#define R_DEVICE_ID 0x008
#define R_DEV_FEATURES 0x010
#define R_DEV_FEATURES_SEL 0x014
#define R_DRV_FEATURES 0x020
#define R_DRV_FEATURES_SEL 0x024
#define R_QUEUE_SEL 0x030
#define R_QUEUE_NUM_MAX 0x034
#define R_QUEUE_NUM 0x038
#define R_QUEUE_READY 0x044
#define R_QUEUE_NOTIFY 0x050
#define R_STATUS 0x070
#define R_DESC_LO 0x080
#define R_DESC_HI 0x084
#define R_AVAIL_LO 0x090
#define R_AVAIL_HI 0x094
#define R_USED_LO 0x0a0
#define R_USED_HI 0x0a4
#define R_CONFIG 0x100

#define S_ACK 1
#define S_DRIVER 2
#define S_DRIVER_OK 4
#define S_FEATURES_OK 8

#define D_NEXT 1
#define D_WRITE 2

#define QSZ 16

struct desc { u64 addr; u32 len; u16 flags; u16 next; };
struct avail { u16 flags; u16 idx; u16 ring[QSZ]; u16 used_event; };
struct used_elem { u32 id; u32 len; };
struct used { u16 flags; u16 idx; struct used_elem ring[QSZ]; u16 avail_event; };

struct vq {
    u64 dev;
    u32 index;
    u16 size;
    u16 last_used;
    volatile struct desc *desc;
    volatile struct avail *avail;
    volatile struct used *used;
};

#define MAX_QUEUES 24
static u8 queue_pages[MAX_QUEUES][4096] __attribute__((aligned(4096)));
static u32 queue_pages_used;

static int vq_setup(struct vq *q, u64 dev, u32 index)
{
    if (queue_pages_used >= MAX_QUEUES) return -1;
    u8 *page = queue_pages[queue_pages_used++];
    memset(page, 0, 4096);
    wr32(dev + R_QUEUE_SEL, index);
    u32 max = rd32(dev + R_QUEUE_NUM_MAX);
    if (max == 0) return -1;
    u16 size = QSZ;
    while (size > max) size >>= 1;
    q->dev = dev;
    q->index = index;
    q->size = size;
    q->last_used = 0;
    q->desc = (volatile struct desc *)page;
    q->avail = (volatile struct avail *)(page + 256);
    q->used = (volatile struct used *)(page + 512);
    u64 d = (u64)q->desc, a = (u64)q->avail, u = (u64)q->used;
    wr32(dev + R_QUEUE_NUM, size);
    wr32(dev + R_DESC_LO, (u32)d);
    wr32(dev + R_DESC_HI, (u32)(d >> 32));
    wr32(dev + R_AVAIL_LO, (u32)a);
    wr32(dev + R_AVAIL_HI, (u32)(a >> 32));
    wr32(dev + R_USED_LO, (u32)u);
    wr32(dev + R_USED_HI, (u32)(u >> 32));
    wr32(dev + R_QUEUE_READY, 1);
    return 0;
}

/* Puts the chain starting at `head` in the available ring (no notification). */
static void vq_push(struct vq *q, u16 head)
{
    u16 i = q->avail->idx;
    q->avail->ring[i % q->size] = head;
    barrier();
    q->avail->idx = (u16)(i + 1);
    barrier();
}

static void vq_kick(struct vq *q) { wr32(q->dev + R_QUEUE_NOTIFY, q->index); }

/* One used element, or -1 when none is pending. */
static int vq_pop(struct vq *q, u32 *len)
{
    barrier();
    if (q->used->idx == q->last_used) return -1;
    barrier();
    volatile struct used_elem *e = &q->used->ring[q->last_used % q->size];
    int id = (int)e->id;
    if (len) *len = e->len;
    q->last_used++;
    return id;
}

/* Waits for one used element (the device answers synchronous requests promptly). */
static int vq_wait(struct vq *q, u32 *len)
{
    for (u32 spins = 0; spins < 100000; spins++) {
        int id = vq_pop(q, len);
        if (id >= 0) return id;
        outb(IDLE_PORT, 0);
    }
    return -1;
}

static int dev_begin(u64 dev, u32 feat_lo_wanted)
{
    wr32(dev + R_STATUS, 0);
    wr32(dev + R_STATUS, S_ACK);
    wr32(dev + R_STATUS, S_ACK | S_DRIVER);
    wr32(dev + R_DEV_FEATURES_SEL, 1);
    u32 hi = rd32(dev + R_DEV_FEATURES);
    if (!(hi & 1)) return -1; /* VIRTIO_F_VERSION_1 */
    wr32(dev + R_DEV_FEATURES_SEL, 0);
    u32 lo = rd32(dev + R_DEV_FEATURES);
    wr32(dev + R_DRV_FEATURES_SEL, 0);
    wr32(dev + R_DRV_FEATURES, lo & feat_lo_wanted);
    wr32(dev + R_DRV_FEATURES_SEL, 1);
    wr32(dev + R_DRV_FEATURES, 1);
    wr32(dev + R_STATUS, S_ACK | S_DRIVER | S_FEATURES_OK);
    if (!(rd32(dev + R_STATUS) & S_FEATURES_OK)) return -1;
    return (int)lo;
}

static void dev_ready(u64 dev)
{
    wr32(dev + R_STATUS, S_ACK | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK);
}

/* ---- virtio-input ---- */

struct input_event { u16 type; u16 code; u32 value; };

#define MAX_INPUTS 2
struct input_dev {
    struct vq eventq;
    char name[32];
    struct input_event ev[QSZ];
};
static struct input_dev inputs[MAX_INPUTS];
static u32 n_inputs;

static void input_init(u64 dev)
{
    if (n_inputs >= MAX_INPUTS) return;
    struct input_dev *in = &inputs[n_inputs];
    if (dev_begin(dev, 0) < 0) { puts("atrium-fw: input: features refused\n"); return; }
    /* The device name: select ID_NAME (1). */
    *(volatile u8 *)(dev + R_CONFIG + 0) = 1;
    *(volatile u8 *)(dev + R_CONFIG + 1) = 0;
    u32 n = rd8(dev + R_CONFIG + 2);
    if (n > sizeof(in->name) - 1) n = sizeof(in->name) - 1;
    for (u32 i = 0; i < n; i++) in->name[i] = (char)rd8(dev + R_CONFIG + 8 + i);
    in->name[n] = 0;
    if (vq_setup(&in->eventq, dev, 0) < 0) { puts("atrium-fw: input: no eventq\n"); return; }
    for (u16 i = 0; i < in->eventq.size; i++) {
        in->eventq.desc[i].addr = (u64)&in->ev[i];
        in->eventq.desc[i].len = sizeof(struct input_event);
        in->eventq.desc[i].flags = D_WRITE;
        vq_push(&in->eventq, i);
    }
    dev_ready(dev);
    vq_kick(&in->eventq);
    puts("atrium-fw: input ");
    putdec(n_inputs);
    puts(" \"");
    puts(in->name);
    puts("\"\n");
    n_inputs++;
}

static int input_poll(void)
{
    int busy = 0;
    for (u32 d = 0; d < n_inputs; d++) {
        struct input_dev *in = &inputs[d];
        int id;
        while ((id = vq_pop(&in->eventq, 0)) >= 0) {
            busy = 1;
            if ((u32)id >= in->eventq.size) continue;
            struct input_event e = in->ev[id];
            if (e.type != 0) { /* EV_SYN lines would only add noise */
                puts("input ");
                puts(in->name);
                puts(" type=");
                putdec(e.type);
                puts(" code=");
                putdec(e.code);
                puts(" value=");
                putsdec((int)e.value);
                putc('\n');
                if (e.type == 1 && e.code < 256 && bi->fb_addr) draw_key(e.code, e.value != 0);
            }
            vq_push(&in->eventq, (u16)id);
            vq_kick(&in->eventq);
        }
    }
    return busy;
}

/* ---- virtio-blk ---- */

struct blk_req { u32 type; u32 reserved; u64 sector; };
static struct blk_req breq;
static u8 bdata[512];
static u8 bstatus;
static u32 n_blks;

static int blk_rw(struct vq *q, u32 type, u64 sector)
{
    breq.type = type;
    breq.reserved = 0;
    breq.sector = sector;
    bstatus = 0xff;
    q->desc[0].addr = (u64)&breq;
    q->desc[0].len = sizeof(breq);
    q->desc[0].flags = D_NEXT;
    q->desc[0].next = 1;
    q->desc[1].addr = (u64)bdata;
    q->desc[1].len = sizeof(bdata);
    q->desc[1].flags = D_NEXT | (type == 0 ? D_WRITE : 0);
    q->desc[1].next = 2;
    q->desc[2].addr = (u64)&bstatus;
    q->desc[2].len = 1;
    q->desc[2].flags = D_WRITE;
    q->desc[2].next = 0;
    vq_push(q, 0);
    vq_kick(q);
    if (vq_wait(q, 0) < 0) return -1;
    return bstatus;
}

static void blk_init(u64 dev)
{
    static struct vq q;
    u32 n = n_blks++;
    int lo = dev_begin(dev, 1u << 5 /* RO */);
    if (lo < 0) { puts("atrium-fw: blk: features refused\n"); return; }
    u64 cap = (u64)rd32(dev + R_CONFIG) | ((u64)rd32(dev + R_CONFIG + 4) << 32);
    int ro = (lo >> 5) & 1;
    if (vq_setup(&q, dev, 0) < 0) { puts("atrium-fw: blk: no queue\n"); return; }
    dev_ready(dev);
    puts("blk");
    putdec(n);
    puts(" capacity=");
    putdec(cap);
    puts(" ro=");
    putdec((u64)ro);
    int st = blk_rw(&q, 0, 0);
    puts(" read=");
    putsdec(st);
    puts(" sector0=\"");
    for (int i = 0; i < 32 && bdata[i] >= 0x20 && bdata[i] < 0x7f; i++) putc((char)bdata[i]);
    puts("\"");
    const char *msg = "written by atrium-fw";
    memset(bdata, 0, sizeof(bdata));
    memcpy(bdata, msg, strlen(msg));
    st = blk_rw(&q, 1, 1);
    puts(" write=");
    putsdec(st);
    putc('\n');
}

/* ---- virtio-console (multiport), the agent port ---- */

#define VIRTIO_CONSOLE_F_MULTIPORT (1u << 1)
#define C_DEVICE_READY 0
#define C_DEVICE_ADD 1
#define C_PORT_READY 3
#define C_PORT_OPEN 6
#define C_PORT_NAME 7

struct ctrl { u32 id; u16 event; u16 value; };

static struct vq con_rx, con_tx, ctl_rx, ctl_tx;
static u8 con_rx_buf[QSZ][256];
static u8 ctl_rx_buf[QSZ][128];
static u8 con_tx_buf[512];
static struct ctrl ctl_tx_msg;
static int console_up;
static char line[512];
static u32 line_len;

static void ctl_send(u32 id, u16 event, u16 value)
{
    ctl_tx_msg.id = id;
    ctl_tx_msg.event = event;
    ctl_tx_msg.value = value;
    ctl_tx.desc[0].addr = (u64)&ctl_tx_msg;
    ctl_tx.desc[0].len = sizeof(ctl_tx_msg);
    ctl_tx.desc[0].flags = 0;
    vq_push(&ctl_tx, 0);
    vq_kick(&ctl_tx);
    vq_wait(&ctl_tx, 0);
}

static void agent_send(const char *s)
{
    u64 n = strlen(s);
    if (n > sizeof(con_tx_buf)) n = sizeof(con_tx_buf);
    memcpy(con_tx_buf, s, n);
    con_tx.desc[0].addr = (u64)con_tx_buf;
    con_tx.desc[0].len = (u32)n;
    con_tx.desc[0].flags = 0;
    vq_push(&con_tx, 0);
    vq_kick(&con_tx);
    vq_wait(&con_tx, 0);
}

static void console_init(u64 dev)
{
    if (console_up) return;
    int lo = dev_begin(dev, VIRTIO_CONSOLE_F_MULTIPORT);
    if (lo < 0 || !(lo & VIRTIO_CONSOLE_F_MULTIPORT)) { puts("atrium-fw: console: no multiport\n"); return; }
    if (vq_setup(&con_rx, dev, 0) || vq_setup(&con_tx, dev, 1) || vq_setup(&ctl_rx, dev, 2) ||
        vq_setup(&ctl_tx, dev, 3)) {
        puts("atrium-fw: console: no queues\n");
        return;
    }
    for (u16 i = 0; i < con_rx.size; i++) {
        con_rx.desc[i].addr = (u64)con_rx_buf[i];
        con_rx.desc[i].len = sizeof(con_rx_buf[i]);
        con_rx.desc[i].flags = D_WRITE;
        vq_push(&con_rx, i);
    }
    for (u16 i = 0; i < ctl_rx.size; i++) {
        ctl_rx.desc[i].addr = (u64)ctl_rx_buf[i];
        ctl_rx.desc[i].len = sizeof(ctl_rx_buf[i]);
        ctl_rx.desc[i].flags = D_WRITE;
        vq_push(&ctl_rx, i);
    }
    dev_ready(dev);
    vq_kick(&con_rx);
    vq_kick(&ctl_rx);
    console_up = 1;
    ctl_send(0, C_DEVICE_READY, 1);
    puts("atrium-fw: console ready\n");
}

/* The id of {"type":"ping","id":N}, or -1 when the line is not a ping. */
static long long ping_id(const char *l, u32 n)
{
    static const char ty[] = "\"type\":\"ping\"";
    static const char idk[] = "\"id\":";
    int is_ping = 0;
    long long id = -1;
    for (u32 i = 0; i < n; i++) {
        u32 k = 0;
        while (ty[k] && i + k < n && l[i + k] == ty[k]) k++;
        if (!ty[k]) is_ping = 1;
        k = 0;
        while (idk[k] && i + k < n && l[i + k] == idk[k]) k++;
        if (!idk[k]) {
            u32 j = i + k;
            if (j < n && l[j] >= '0' && l[j] <= '9') {
                id = 0;
                while (j < n && l[j] >= '0' && l[j] <= '9' && id < 100000000000000LL)
                    id = id * 10 + (l[j++] - '0');
            }
        }
    }
    return is_ping ? id : -1;
}

static void agent_line(void)
{
    long long id = ping_id(line, line_len);
    if (id >= 0) {
        char out[64];
        const char *pre = "{\"type\":\"pong\",\"id\":";
        u32 n = 0;
        while (pre[n]) { out[n] = pre[n]; n++; }
        char d[24];
        int k = 0;
        u64 v = (u64)id;
        do { d[k++] = (char)('0' + v % 10); v /= 10; } while (v);
        while (k) out[n++] = d[--k];
        out[n++] = '}';
        out[n++] = '\n';
        out[n] = 0;
        agent_send(out);
        puts("agent: ping ");
        putdec((u64)id);
        putc('\n');
    } else {
        agent_send("{\"type\":\"error\",\"message\":\"the test firmware only answers ping\"}\n");
    }
}

static int console_poll(void)
{
    if (!console_up) return 0;
    int busy = 0, id;
    u32 len;
    while ((id = vq_pop(&ctl_rx, &len)) >= 0) {
        busy = 1;
        if ((u32)id < ctl_rx.size && len >= sizeof(struct ctrl)) {
            struct ctrl *c = (struct ctrl *)ctl_rx_buf[id];
            if (c->event == C_DEVICE_ADD) {
                ctl_send(c->id, C_PORT_READY, 1);
            } else if (c->event == C_PORT_NAME) {
                puts("agent: port \"");
                for (u32 i = sizeof(struct ctrl); i < len && i < sizeof(ctl_rx_buf[0]); i++)
                    putc((char)ctl_rx_buf[id][i]);
                puts("\"\n");
                ctl_send(c->id, C_PORT_OPEN, 1);
                agent_send("{\"type\":\"hello\",\"version\":1,\"agent\":\"atrium-test-firmware\"}\n");
                agent_send("{\"type\":\"ready\"}\n");
            } else if (c->event == C_PORT_OPEN) {
                puts(c->value ? "agent: host connected\n" : "agent: host disconnected\n");
            }
        }
        vq_push(&ctl_rx, (u16)id);
        vq_kick(&ctl_rx);
    }
    while ((id = vq_pop(&con_rx, &len)) >= 0) {
        busy = 1;
        if ((u32)id < con_rx.size) {
            if (len > sizeof(con_rx_buf[0])) len = sizeof(con_rx_buf[0]);
            for (u32 i = 0; i < len; i++) {
                char ch = (char)con_rx_buf[id][i];
                if (ch == '\n') {
                    agent_line();
                    line_len = 0;
                } else if (line_len < sizeof(line)) {
                    line[line_len++] = ch;
                }
            }
        }
        vq_push(&con_rx, (u16)id);
        vq_kick(&con_rx);
    }
    return busy;
}

/* ---- main ---- */

void fw_main(struct boot_info *info)
{
    puts("atrium-fw: start\n");
    if (!info || info->magic != BOOT_MAGIC) {
        puts("atrium-fw: no boot info, halting\n");
        return;
    }
    bi = info;
    if (bi->fb_addr) {
        draw_pattern();
        puts("atrium-fw: pattern drawn ");
        putdec(bi->fb_width);
        putc('x');
        putdec(bi->fb_height);
        putc('\n');
    }
    for (u32 i = 0; i < bi->virtio_count; i++) {
        u64 dev = bi->virtio_base + (u64)i * bi->virtio_stride;
        if (rd32(dev + R_MAGIC) != VIRTIO_MAGIC || rd32(dev + R_VERSION) != 2) continue;
        switch (rd32(dev + R_DEVICE_ID)) {
        case 2: blk_init(dev); break;
        case 3: console_init(dev); break;
        case 18: input_init(dev); break;
        default: break;
        }
    }
    puts("atrium-fw: ready\n");
    for (;;) {
        int busy = input_poll();
        busy |= console_poll();
        if (!busy) outb(IDLE_PORT, 0);
    }
}
