/* The demo workload: counts in memory and appends "tick N" to a log file five times a
 * second. After a dump and a restore the ticks go on from where they were. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: %s LOGFILE\n", argv[0]);
		return 2;
	}
	FILE *log = fopen(argv[1], "a");
	if (!log)
		return 1;
	setvbuf(log, NULL, _IOLBF, 0);
	unsigned long n = 0;
	for (;;) {
		fprintf(log, "tick %lu (pid %d)\n", ++n, (int)getpid());
		struct timespec ts = { 0, 200 * 1000 * 1000 };
		while (nanosleep(&ts, &ts) != 0)
			;
	}
}
