/* A second kernel-like unit: const tables, static locals, gcc clones
 * (.constprop, .isra, .part), inline helpers, __func__, exports, exception
 * tables, lock prefixes, a dense switch, __exit and __cold code.
 * tests/kobj/cases.toml edits it (cases with source = "subsys.c"). */
#include "kernel.h"

struct item { int id; int weight; const char *name; long pad[4]; };

struct kernel_symbol { unsigned long value; const char *name; };
#define EXPORT_SYMBOL(sym)                                                        \
	extern typeof(sym) sym;                                                   \
	static const char __kstrtab_##sym[]                                       \
		__attribute__((__section__("__ksymtab_strings"), used, aligned(1))) = #sym; \
	static const struct kernel_symbol __ksymtab_##sym                         \
		__attribute__((__section__("___ksymtab+" #sym), used)) =          \
		{ (unsigned long)&sym, __kstrtab_##sym }

/* __LINE__ in arguments: moved lines change only some of them */
extern void sub_log(int v, int line);
extern void __might_fault(const char *file, int line);
extern void lockdep_rcu_suspicious(const char *file, const int line, const char *s);

void sub_note(int v)
{
	sub_log(v, __LINE__);
}

void sub_copy(void)
{
	__might_fault(__FILE__, __LINE__);
	lockdep_rcu_suspicious(__FILE__, __LINE__, "sub: suspicious");
}

void sub_warn2(int a)
{
	__warn_printk("sub: %d at %d\n", a, __LINE__);
}

void sub_warn3(int a)
{
	__warn_printk("sub: %d %d at %d\n", a, 1, __LINE__);
}

static const int sub_weights[4] = { 1, 2, 4, 8 };
int sub_count;
long sub_total = 5;

int sub_weight(int i)
{
	return sub_weights[i & 3];
}

int sub_next(void)
{
	static int seq;
	return ++seq;
}

int sub_step(void)
{
	static int seq = 100;
	return seq += 2;
}

static noinline int sub_mix(int a, int b, int c)
{
	return a * b + c;
}

int sub_mix_user(int x)
{
	return sub_mix(x, 3, 7) + sub_mix(x + 1, 3, 7);
}

static noinline int sub_item_weight(struct item *it)
{
	return it->weight * 2 + 1;
}

int sub_item_sum(struct item *a, struct item *b)
{
	return sub_item_weight(a) + sub_item_weight(b);
}

static inline int sub_clamp(int v)
{
	return v > 100 ? 100 : v;
}

int sub_set(struct item *it, int v)
{
	it->weight = sub_clamp(v);
	return 0;
}

int sub_add(struct item *it, int v)
{
	it->weight = sub_clamp(it->weight + v);
	return 0;
}

void sub_trace(int v)
{
	pr_info("%s: %d\n", __func__, v);
}

long sub_sum(long a, long b)
{
	return a + b + sub_total;
}
EXPORT_SYMBOL(sub_sum);

int sub_safe_read(const int *p)
{
	int v = -14;
	asm volatile("1:\tmovl (%1), %0\n2:\n"
		     ".pushsection __ex_table,\"a\"\n\t.balign 4\n"
		     "\t.long 1b - ., 2b - ., 0\n.popsection"
		     : "+r" (v) : "r" (p));
	return v;
}

void sub_inc(int *p)
{
	asm volatile(".pushsection .smp_locks,\"a\"\n.balign 4\n.long 671f - .\n.popsection\n"
		     "671:\n\tlock incl %0" : "+m" (*p));
}

int sub_dispatch(int op, int a, int b)
{
	switch (op) {
	case 0: return a + b;
	case 1: return a - b;
	case 2: return a * b;
	case 3: return a & b;
	case 4: return a | b;
	case 5: return a << b;
	case 6: return a >> b;
	case 7: return a ^ b;
	default: return 0;
	}
}

extern void sub_report(const char *what, int v);

/* gcc splits the slow part off (sub_find.part.0) and inlines the test */
static int sub_find(struct item *items, int n, int key)
{
	int i, best = -1;

	if (n <= 0)
		return -1;
	for (i = 0; i < n; i++) {
		if (items[i].id == key && (best < 0 || items[i].weight > items[best].weight))
			best = i;
		if (items[i].weight < 0)
			sub_report("negative weight", items[i].weight);
	}
	sub_report("found", best);
	return best;
}

int sub_lookup(struct item *items, int n, int key)
{
	return sub_find(items, n, key) + 1;
}

int sub_lookup2(struct item *items, int n)
{
	return sub_find(items, n, 7) * 2;
}

void __exit sub_exit(void)
{
	sub_count = 0;
}

__attribute__((__cold__)) noinline int sub_rare(int v)
{
	return v * 7;
}

int sub_use_rare(int v)
{
	if (unlikely(v < 0))
		return sub_rare(v);
	return v;
}

/* a split-off part with its own fentry call, as gcc's partial inlining makes
 * them, next to its parent */
asm(".pushsection .text.sub_split.part.0,\"ax\",@progbits\n"
    ".type sub_split.part.0,@function\n"
    "sub_split.part.0:\n\tcall __fentry__\n\tleal 3(%rdi), %eax\n\tret\n"
    ".size sub_split.part.0, .-sub_split.part.0\n.popsection");
extern int sub_split_part(int v) asm("sub_split.part.0");

int sub_split(int v)
{
	return v > 0 ? sub_split_part(v) : 0;
}


/* data in a section it shares with other data (not -fdata-sections' own) */
int sub_mode __read_mostly = 1;

int sub_get_mode(void)
{
	return sub_mode;
}

/* a static helper gcc leaves whole (no clone) */
static noinline __attribute__((__noipa__)) int sub_pick(int a)
{
	return a & 0xff;
}

int sub_pick_user(int a)
{
	return sub_pick(a) + 1;
}
