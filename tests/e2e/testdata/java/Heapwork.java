// Heapwork is the Java workload of the threads end-to-end test: several threads
// and a few hundred MiB of heap, checked by the program itself.
//
// Usage: java Heapwork TRIGGER MIB
//
// It fills MIB arrays of 1 MiB (slot j of array i holds mix(i * 131072 + j)), then
// 6 worker threads add entries to a HashMap under a lock (key k holds mix(k)),
// each addition counted, while 2 threads sleep in Thread.sleep and one waits on a
// monitor. Every 50 ms it prints "counter N". It prints "ready" once everything
// runs, then polls for the file TRIGGER. Once the file exists it stops the
// workers and checks every array, the map against the counter, and that the
// sleepers slept their full time, and prints "OK" (or "FAIL detail", exit 1).
import java.io.File;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.concurrent.atomic.AtomicLong;

public class Heapwork {
    static final int SLOTS = 131072; // longs in 1 MiB

    static long mix(long k) {
        k ^= k >>> 33;
        k *= 0xff51afd7ed558ccdL;
        k ^= k >>> 33;
        return k;
    }

    static void fail(String what) {
        System.out.println("FAIL " + what);
        System.out.flush();
        System.exit(1);
    }

    public static void main(String[] args) throws Exception {
        File trigger = new File(args[0]);
        int mib = Integer.parseInt(args[1]);

        long[][] arrays = new long[mib][];
        for (int i = 0; i < mib; i++) {
            long[] a = new long[SLOTS];
            for (int j = 0; j < SLOTS; j++) {
                a[j] = mix((long) i * SLOTS + j);
            }
            arrays[i] = a;
        }

        HashMap<Long, Long> map = new HashMap<>();
        Object lock = new Object();
        long[] added = {0};
        AtomicLong count = new AtomicLong();
        final boolean[] stop = {false};
        List<Thread> workers = new ArrayList<>();
        for (int w = 0; w < 6; w++) {
            final long seed = w;
            Thread t = new Thread(() -> {
                long x = seed;
                while (true) {
                    synchronized (lock) {
                        if (stop[0]) {
                            return;
                        }
                        long k = added[0]++;
                        map.put(k, mix(k));
                        count.incrementAndGet();
                    }
                    for (int i = 0; i < 2000; i++) {
                        x = mix(x + i);
                    }
                    if ((x & 7) == 0) {
                        Thread.yield();
                    }
                }
            }, "worker-" + w);
            t.start();
            workers.add(t);
        }

        List<Thread> sleepers = new ArrayList<>();
        String[] sleepFailure = {null};
        for (int s = 0; s < 2; s++) {
            Thread t = new Thread(() -> {
                long start = System.nanoTime();
                try {
                    Thread.sleep(4000);
                } catch (InterruptedException e) {
                    sleepFailure[0] = "sleep interrupted";
                }
                if (System.nanoTime() - start < 4_000_000_000L) {
                    sleepFailure[0] = "slept only " + (System.nanoTime() - start) + " ns";
                }
            }, "sleeper-" + s);
            t.start();
            sleepers.add(t);
        }
        Object monitor = new Object();
        boolean[] signalled = {false};
        Thread waiter = new Thread(() -> {
            synchronized (monitor) {
                while (!signalled[0]) {
                    try {
                        monitor.wait();
                    } catch (InterruptedException e) {
                        return;
                    }
                }
            }
        }, "waiter");
        waiter.start();

        Thread.sleep(100);
        System.out.println("ready");
        while (true) {
            System.out.println("counter " + count.get());
            System.out.flush();
            if (trigger.exists()) {
                break;
            }
            Thread.sleep(50);
        }

        synchronized (lock) {
            stop[0] = true;
        }
        for (Thread t : workers) {
            t.join();
        }
        synchronized (monitor) {
            signalled[0] = true;
            monitor.notifyAll();
        }
        waiter.join(10000);
        if (waiter.isAlive()) {
            fail("the waiting thread was not woken");
        }
        for (Thread t : sleepers) {
            t.join();
        }
        if (sleepFailure[0] != null) {
            fail(sleepFailure[0]);
        }
        for (int i = 0; i < mib; i++) {
            for (int j = 0; j < SLOTS; j++) {
                if (arrays[i][j] != mix((long) i * SLOTS + j)) {
                    fail("array " + i + " slot " + j + " holds " + arrays[i][j]);
                }
            }
        }
        if (map.size() != added[0] || added[0] != count.get()) {
            fail("map has " + map.size() + " entries, " + added[0] + " added, counter "
                    + count.get());
        }
        for (var e : map.entrySet()) {
            if (e.getValue() != mix(e.getKey())) {
                fail("map[" + e.getKey() + "] = " + e.getValue());
            }
        }
        System.out.println("final counter " + count.get() + " heap arrays " + mib + " MiB");
        System.out.println("OK");
        System.out.flush();
    }
}
