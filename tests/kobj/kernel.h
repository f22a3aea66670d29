/* The kernel's macros that shape object files, small enough to read: what
 * WARN_ON, WARN_ONCE, pr_debug, printk, might_sleep, lockdep keys,
 * alternatives, jump labels and static calls leave in an object compiled with
 * the kernel's flags (-pg -mfentry -mrecord-mcount, -ffunction-sections
 * -fdata-sections, -mcmodel=kernel). Layouts follow the x86-64 kernel:
 * struct bug_entry (12 bytes), struct alt_instr (14 bytes), struct jump_entry
 * (16 bytes), struct static_call_site (8 bytes), struct _ddebug. */
#ifndef KOBJ_KERNEL_H
#define KOBJ_KERNEL_H

#define __init __attribute__((__section__(".init.text"), __cold__, __noinline__))
#define __exit __attribute__((__section__(".exit.text"), __cold__, __noinline__))
#define notrace __attribute__((__no_instrument_function__))
#define __sched __attribute__((__section__(".sched.text")))
#define noinline __attribute__((__noinline__))
#define __used __attribute__((__used__))
#define __read_mostly __attribute__((__section__(".data..read_mostly")))
#define likely(x) __builtin_expect(!!(x), 1)
#define unlikely(x) __builtin_expect(!!(x), 0)
#define __stringify_1(x) #x
#define __stringify(x) __stringify_1(x)
#define ___PASTE(a, b) a##b
#define __PASTE(a, b) ___PASTE(a, b)
#define __UNIQUE_ID(prefix) __PASTE(__PASTE(__UNIQUE_ID_, prefix), __COUNTER__)

typedef _Bool bool;
#define true 1
#define false 0
#define NULL ((void *)0)

/* printk, with its printk-index entry (CONFIG_PRINTK_INDEX) */
struct pi_entry { const char *fmt, *func, *file; unsigned int line; const char *level, *prefix; };
extern int _printk(const char *fmt, ...);
#define printk(fmt, ...) ({                                                        \
	static const struct pi_entry __used _entry = { fmt, __func__, __FILE__, __LINE__, "", "" }; \
	static const struct pi_entry *_entry_ptr __used                          \
		__attribute__((__section__(".printk_index"))) = &_entry;        \
	_printk(fmt, ##__VA_ARGS__); })
#define pr_info(fmt, ...) printk("\0016" fmt, ##__VA_ARGS__)

/* WARN: the older form passes __FILE__ and __LINE__ to warn_slowpath_fmt */
extern void warn_slowpath_fmt(const char *file, int line, unsigned taint, const char *fmt, ...);
#define WARN_ON_SLOWPATH(cond) ({ int __ret = !!(cond);                          \
	if (unlikely(__ret)) warn_slowpath_fmt(__FILE__, __LINE__, 9, NULL); unlikely(__ret); })

/* WARN_ON: the newer form, ud2 with a __bug_table entry holding file and line */
struct bug_entry { int bug_addr_disp; int file_disp; unsigned short line, flags; };
#define _BUG_FLAGS(ins, flags) asm volatile("1:\t" ins "\n"                       \
	".pushsection __bug_table,\"aw\"\n"                                       \
	"2:\t.long 1b - .\n\t.long %c0 - .\n\t.word %c1\n\t.word %c2\n"            \
	"\t.org 2b+%c3\n.popsection" : : "i" (__FILE__), "i" (__LINE__),          \
	"i" (flags), "i" (sizeof(struct bug_entry)))
#define WARN_ON(cond) ({ int __ret = !!(cond);                                    \
	if (unlikely(__ret)) _BUG_FLAGS("ud2", 1 << 3); unlikely(__ret); })

/* WARN_ONCE: a flag in .data..once, then __warn_printk */
extern void __warn_printk(const char *fmt, ...);
#define WARN_ONCE(cond, fmt, ...) ({                                              \
	static bool __attribute__((__section__(".data..once"))) __already_done;     \
	int __ret = !!(cond);                                                     \
	if (unlikely(__ret && !__already_done)) {                                  \
		__already_done = true; __warn_printk(fmt, ##__VA_ARGS__); }       \
	unlikely(__ret); })

/* might_sleep: file and line to __might_sleep */
extern void __might_sleep(const char *file, int line);
#define might_sleep() __might_sleep(__FILE__, __LINE__)

/* pr_debug with a dynamic-debug descriptor in __dyndbg */
struct _ddebug { const char *modname, *function, *filename, *format; unsigned int lineno:18, flags:8; } __attribute__((aligned(8)));
extern void __dynamic_pr_debug(struct _ddebug *d, const char *fmt, ...);
#define __dynamic_pr_debug_id(id, fmt, ...) do {                                  \
	static struct _ddebug __used __attribute__((__section__("__dyndbg"), aligned(8))) \
		id = { "kobj", __func__, __FILE__, fmt, __LINE__, 0 };                  \
	if (unlikely(id.flags & 1)) __dynamic_pr_debug(&id, fmt, ##__VA_ARGS__);   \
	} while (0)
#define pr_debug(fmt, ...) __dynamic_pr_debug_id(__UNIQUE_ID(ddebug), fmt, ##__VA_ARGS__)
#define pr_debug_old(fmt, ...) __dynamic_pr_debug_id(descriptor, fmt, ##__VA_ARGS__)

/* lockdep: one class key per init site */
struct lock_class_key { char dummy; };
struct mutex { long owner; const char *name; struct lock_class_key *key; };
extern void __mutex_init(struct mutex *lock, const char *name, struct lock_class_key *key);
#define mutex_init(m) do { static struct lock_class_key __key; __mutex_init((m), #m, &__key); } while (0)

/* alternatives: the original instruction, replaced at boot when the CPU has the feature */
#define X86_FEATURE_ALWAYS (3 * 32 + 21)
#define X86_FEATURE_ERMS (9 * 32 + 9)
#define ALTERNATIVE(oldinstr, newinstr, feature)                                  \
	"661:\n\t" oldinstr "\n662:\n"                                              \
	".pushsection .altinstructions,\"a\"\n"                                     \
	" .long 661b - .\n .long 6641f - .\n .4byte " __stringify(feature) "\n"     \
	" .byte 662b-661b\n .byte 6651f-6641f\n.popsection\n"                      \
	".pushsection .altinstr_replacement,\"ax\"\n6641:\n\t" newinstr "\n6651:\n.popsection\n"

/* jump labels: a NOP (key false by default) that may become a jmp */
struct static_key { int enabled; };
static __attribute__((always_inline)) inline bool arch_static_branch(struct static_key *key)
{
	asm goto("1: .byte 0x0f,0x1f,0x44,0x00,0x00\n\t"
		 ".pushsection __jump_table, \"aw\"\n\t.balign 8\n\t"
		 ".long 1b - ., %l[l_yes] - .\n\t.quad %c0 - .\n\t.popsection"
		 : : "i" (key) : : l_yes);
	return false;
l_yes:
	return true;
}
#define static_branch_unlikely(k) unlikely(arch_static_branch(k))

/* static calls: a direct call to a trampoline, recorded in .static_call_sites */
#define STATIC_CALL_TRAMP(name) __SCT__##name
#define static_call(name) STATIC_CALL_TRAMP(name)

/* the kernel's markers for kpatch-build */
#define KPATCH_IGNORE_FUNCTION(_fn)                                               \
	void *__kpatch_ignore_func_##_fn __attribute__((__section__(".kpatch.ignore.functions"))) = _fn
#define KPATCH_IGNORE_SECTION(_sec)                                               \
	char *__UNIQUE_ID(kpatch_ignore_section_) __attribute__((__section__(".kpatch.ignore.sections"))) = _sec

#endif
