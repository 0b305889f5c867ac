// JDBC through the proxy: run by tests/e2e/test_jdbc.py with the PostgreSQL JDBC driver.
// Usage: java -cp postgresql.jar CleanJdbc.java JDBC_URL DATABASE_TO_CLEAN
// Prints one line per step; the test compares them.
import java.sql.*;

public class CleanJdbc {
    public static void main(String[] args) throws Exception {
        String url = args[0];
        String db = args[1];
        try (Connection conn = DriverManager.getConnection(url)) {
            try (Statement st = conn.createStatement()) {
                boolean hasRows = st.execute("CLEAN CONNECTION TO ALL FORCE FOR DATABASE " + db);
                System.out.println("execute rows=" + hasRows + " count=" + st.getUpdateCount());
            }
            // pgjdbc switches to a named server-side statement after prepareThreshold (5) runs.
            try (PreparedStatement ps =
                    conn.prepareStatement("CLEAN CONNECTION TO ALL FOR DATABASE " + db)) {
                for (int i = 0; i < 7; i++) {
                    ps.execute();
                }
                System.out.println("prepared x7 ok");
            }
            try (Statement st = conn.createStatement()) {
                st.execute("CLEAN CONNECTION TO ALL FORCE CHECK FOR DATABASE " + db);
            } catch (SQLException e) {
                System.out.println("syntax " + e.getSQLState() + " " + e.getMessage().split("\n")[0]);
            }
            try (Statement st = conn.createStatement()) {
                st.execute("CLEAN CONNECTION TO ALL FOR DATABASE no_such_db");
            } catch (SQLException e) {
                System.out.println("missing " + e.getSQLState() + " " + e.getMessage().split("\n")[0]);
            }
            conn.setAutoCommit(false);
            try (Statement st = conn.createStatement()) {
                st.execute("CLEAN CONNECTION TO ALL FORCE FOR DATABASE " + db);
                try (ResultSet rs = st.executeQuery("select 6 * 7")) {
                    rs.next();
                    System.out.println("in transaction " + rs.getInt(1));
                }
            }
            conn.rollback();
        }
    }
}
