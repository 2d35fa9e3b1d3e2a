// pgJDBC through shardgate: compiled and run by tests/drivers.rs as
// `java -cp postgresql.jar:DIR JdbcCheck URL USER PASSWORD`.
//
// With prepareThreshold=1 in the URL the driver switches to named server-side statements
// (S_1, S_2, ...) on the first reuse, so six threads on a pool of two exercise the proxy's
// statement renaming across checkouts, plus batches, rollback, COPY and Statement.cancel().
// Prints "OK" and exits 0 on success; otherwise prints what failed and exits 1.

import java.io.StringReader;
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.CyclicBarrier;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicReference;

import org.postgresql.PGConnection;
import org.postgresql.PGStatement;
import org.postgresql.copy.CopyManager;

public class JdbcCheck {
    static final int THREADS = 6;
    static String url;
    static String user;
    static String password;

    static void check(boolean cond, String what) {
        if (!cond) {
            throw new AssertionError(what);
        }
    }

    static Connection connect() throws SQLException {
        return DriverManager.getConnection(url, user, password);
    }

    static long count(Connection c, String sql, int arg) throws SQLException {
        try (PreparedStatement ps = c.prepareStatement(sql)) {
            ps.setInt(1, arg);
            try (ResultSet rs = ps.executeQuery()) {
                check(rs.next(), "no row for " + sql);
                return rs.getLong(1);
            }
        }
    }

    /** Prepared statement reuse, a batch, a commit and a rollback on one connection. */
    static void worker(Connection c, int i, CyclicBarrier barrier) throws Exception {
        barrier.await(20, TimeUnit.SECONDS);
        try (PreparedStatement ps = c.prepareStatement("SELECT ?::int + ?::int, ?::text")) {
            for (int n = 0; n < 15; n++) {
                ps.setInt(1, i);
                ps.setInt(2, n);
                ps.setString(3, "w" + i);
                try (ResultSet rs = ps.executeQuery()) {
                    check(rs.next() && rs.getInt(1) == i + n && rs.getString(2).equals("w" + i),
                        "prepared select " + i + "/" + n);
                }
            }
            // prepareThreshold=1 really made the driver use a named server-side statement.
            check(ps.unwrap(PGStatement.class).isUseServerPrepare(), "not server-prepared");
        }

        c.setAutoCommit(false);
        try (PreparedStatement ins =
                 c.prepareStatement("INSERT INTO items (worker, n, label) VALUES (?, ?, ?)")) {
            for (int n = 0; n < 50; n++) {
                ins.setInt(1, i);
                ins.setInt(2, n);
                ins.setString(3, "w" + i + "n" + n);
                ins.addBatch();
            }
            int[] done = ins.executeBatch();
            check(done.length == 50, "batch length " + done.length);
        }
        check(count(c, "SELECT count(*) FROM items WHERE worker = ?", i) == 50, "count in tx");
        Thread.sleep(10); // let other connections' transactions interleave
        c.commit();

        try (PreparedStatement ins =
                 c.prepareStatement("INSERT INTO items (worker, n, label) VALUES (?, 999, 'gone')")) {
            ins.setInt(1, i);
            check(ins.executeUpdate() == 1, "insert before rollback");
        }
        check(count(c, "SELECT count(*) FROM items WHERE worker = ?", i) == 51, "count before rollback");
        c.rollback();
        c.setAutoCommit(true);
        for (int n = 0; n < 10; n++) {
            check(count(c, "SELECT count(*) FROM items WHERE worker = ?", i) == 50,
                "count after rollback");
        }
    }

    static void copyCheck(Connection c) throws Exception {
        CopyManager copy = c.unwrap(PGConnection.class).getCopyAPI();
        StringBuilder data = new StringBuilder();
        for (int n = 0; n < 500; n++) {
            data.append(1000 + n).append('\t').append(n).append("\tcopy ").append(n).append('\n');
        }
        long copied = copy.copyIn("COPY items (worker, n, label) FROM STDIN",
            new StringReader(data.toString()));
        check(copied == 500, "copyIn rows " + copied);
        check(count(c, "SELECT count(*) FROM items WHERE worker >= ?", 1000) == 500,
            "count after copy");
    }

    static final String SLEEPING = "SELECT count(*) FROM pg_stat_activity"
        + " WHERE query = 'SELECT pg_sleep(30)' AND state = 'active' AND ? = 0";

    /** Waits until the server runs the pg_sleep(30): a cancel that arrives while the client
     *  still waits for a pooled server connection has nothing to cancel yet. */
    static void waitSleeping(Connection observer) throws Exception {
        for (int i = 0; i < 500; i++) {
            if (count(observer, SLEEPING, 0) > 0) {
                return;
            }
            Thread.sleep(20);
        }
        throw new AssertionError("pg_sleep(30) never started on the server");
    }

    static void cancelCheck(Connection c, Connection observer) throws Exception {
        long start = System.nanoTime();
        try (Statement st = c.createStatement()) {
            Thread canceller = new Thread(() -> {
                try {
                    waitSleeping(observer);
                    st.cancel();
                } catch (Exception e) {
                    e.printStackTrace();
                }
            });
            canceller.start();
            try {
                st.executeQuery("SELECT pg_sleep(30)");
                throw new AssertionError("pg_sleep(30) was not cancelled");
            } catch (SQLException e) {
                check("57014".equals(e.getSQLState()), "cancel SQLState " + e.getSQLState() + ": " + e);
            }
            canceller.join(10_000);
        }
        long ms = (System.nanoTime() - start) / 1_000_000;
        check(ms < 10_000, "cancel took " + ms + " ms");
        check(count(c, "SELECT ?::int * 2", 21) == 42, "usable after cancel");
        check(count(observer, SLEEPING, 0) == 0, "pg_sleep(30) still running on the server");
    }

    static void runAll(List<Thread> threads, AtomicReference<Throwable> failure) throws Exception {
        for (Thread t : threads) {
            t.start();
        }
        for (Thread t : threads) {
            t.join(40_000);
            check(!t.isAlive(), "a worker thread hung");
        }
        if (failure.get() != null) {
            throw new AssertionError("worker failed", failure.get());
        }
    }

    interface Job {
        void run() throws Exception;
    }

    static Thread thread(Job job, AtomicReference<Throwable> failure) {
        return new Thread(() -> {
            try {
                job.run();
            } catch (Throwable e) {
                failure.compareAndSet(null, e);
            }
        });
    }

    public static void main(String[] args) throws Exception {
        if (args.length != 3) {
            System.err.println("usage: JdbcCheck URL USER PASSWORD");
            System.exit(2);
        }
        url = args[0];
        user = args[1];
        password = args[2];
        DriverManager.setLoginTimeout(10);
        try {
            run();
        } catch (Throwable e) {
            System.err.println("FAILED: " + e);
            e.printStackTrace();
            System.exit(1);
        }
        System.out.println("OK");
        System.exit(0);
    }

    static void run() throws Exception {
        List<Connection> conns = new ArrayList<>();
        for (int i = 0; i < THREADS; i++) {
            conns.add(connect());
        }
        try (Statement st = conns.get(0).createStatement()) {
            st.execute("CREATE TABLE items (worker int NOT NULL, n int NOT NULL, label text)");
        }

        AtomicReference<Throwable> failure = new AtomicReference<>();
        CyclicBarrier barrier = new CyclicBarrier(THREADS);
        List<Thread> threads = new ArrayList<>();
        for (int i = 0; i < THREADS; i++) {
            final int id = i;
            threads.add(thread(() -> worker(conns.get(id), id, barrier), failure));
        }
        runAll(threads, failure);
        try (Statement st = conns.get(1).createStatement();
             ResultSet rs = st.executeQuery("SELECT count(*), count(DISTINCT worker) FROM items")) {
            check(rs.next() && rs.getLong(1) == 50L * THREADS && rs.getLong(2) == THREADS,
                "items total");
        }

        // COPY and cancel while the other connections keep the small pool busy.
        threads.clear();
        threads.add(thread(() -> copyCheck(conns.get(0)), failure));
        threads.add(thread(() -> cancelCheck(conns.get(1), conns.get(5)), failure));
        for (int i = 2; i < THREADS - 1; i++) {
            final int id = i;
            threads.add(thread(() -> {
                for (int n = 0; n < 20; n++) {
                    check(count(conns.get(id), "SELECT ?::int + 1", n) == n + 1, "select again");
                }
            }, failure));
        }
        runAll(threads, failure);
        for (Connection c : conns) {
            c.close();
        }
    }
}
