/* A switch big enough for a jump table. */
#define noinline __attribute__((noinline))

volatile long sink;

noinline long step(long x) { sink += x; return sink; }

noinline long dispatch(long op, long a, long b)
{
	switch (op) {
	case 0: return a + b;
	case 1: return a - b;
	case 2: return step(a) * b;
	case 3: return a ^ step(b);
	case 4: return step(a + b) + step(a - b);
	case 5: return a << 3;
	case 6: sink = a; return b;
	case 7: return step(7);
	case 8: return a * b * 3;
	case 9: return step(a) | step(b);
	case 10: return -a;
	case 11: return step(a * 11);
	default: return 0;
	}
}

noinline long interp(const unsigned char *pc, long n)
{
	long acc = 0;
	for (long i = 0; i < n; i++) {
		switch (pc[i]) {
		case 0: acc += 1; break;
		case 1: acc -= 1; break;
		case 2: acc = step(acc); break;
		case 3: acc *= 2; break;
		case 4: acc ^= 0x55; break;
		case 5: if (acc > 10) return acc; break;
		case 6: acc = step(acc + i); break;
		case 7: acc >>= 1; break;
		case 8: acc = 0; break;
		default: return -1;
		}
	}
	return acc;
}

/* Computed goto: indirect jumps through a table of label addresses. */
noinline long threaded(const unsigned char *pc)
{
	static void *ops[] = { &&op_inc, &&op_dec, &&op_step, &&op_end };
	long acc = 0;

	goto *ops[*pc++];
op_inc:
	acc++;
	goto *ops[*pc++];
op_dec:
	acc--;
	goto *ops[*pc++];
op_step:
	acc = step(acc);
	goto *ops[*pc++];
op_end:
	return acc;
}
