/*
 * test_klp_syscall: getpid() counts down the processes named in its
 * klp_pids parameter as each of them first calls the new version; sysfs
 * shows how many are left (/sys/kernel/test_klp_syscall/npids reads
 * npids_pending). The test writes the parameters before the enable, as
 * insmod and the module's init do.
 */
#define NR_CPUS 64

struct task_struct {
	long pid;
};

static inline __attribute__((always_inline)) struct task_struct *get_current(void)
{
	struct task_struct *t;

	__asm__ volatile("movq %%gs:0x40, %0" : "=r"(t));
	return t;
}

volatile unsigned int npids, npids_pending;
volatile int klp_pids[NR_CPUS];
static volatile int kpid_mutex;          /* a spinning stand-in for the module's mutex */

static void kpid_lock(void)
{
	while (__atomic_exchange_n(&kpid_mutex, 1, __ATOMIC_ACQUIRE))
		__asm__ volatile("pause");
}

static void kpid_unlock(void)
{
	__atomic_store_n(&kpid_mutex, 0, __ATOMIC_RELEASE);
}

long lp_sys_getpid(void)
{
	long pid = get_current()->pid;

	kpid_lock();
	if (npids_pending > 0) {
		for (unsigned int i = 0; i < npids; i++) {
			if (pid == klp_pids[i]) {
				klp_pids[i] = 0;
				npids_pending--;
				break;
			}
		}
	}
	kpid_unlock();
	return pid;
}
