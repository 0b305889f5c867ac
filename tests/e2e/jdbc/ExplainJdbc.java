// EXPLAIN CLEAN CONNECTION from JDBC: run by tests/e2e/test_explain_clean.py with the
// PostgreSQL JDBC driver. Usage: java -cp postgresql.jar ExplainJdbc.java JDBC_URL DATABASE
// Prints the prepared statement's column metadata (from Describe, before any execution),
// one line per row of seven executions (pgjdbc switches to a named server-side statement
// after prepareThreshold, 5), then the error of an EXPLAIN naming a missing database.
import java.sql.*;

public class ExplainJdbc {
    public static void main(String[] args) throws Exception {
        String url = args[0];
        String db = args[1];
        try (Connection conn = DriverManager.getConnection(url)) {
            try (PreparedStatement ps =
                    conn.prepareStatement("EXPLAIN CLEAN CONNECTION TO ALL FOR DATABASE " + db)) {
                ResultSetMetaData meta = ps.getMetaData();
                StringBuilder columns = new StringBuilder("columns ");
                for (int i = 1; i <= meta.getColumnCount(); i++) {
                    if (i > 1) columns.append(',');
                    columns.append(meta.getColumnName(i)).append(':').append(meta.getColumnTypeName(i));
                }
                System.out.println(columns);
                for (int n = 0; n < 7; n++) {
                    try (ResultSet rs = ps.executeQuery()) {
                        while (rs.next()) {
                            System.out.println("row " + rs.getInt("pid") + " " + rs.getString("action")
                                    + " " + rs.getString("reason"));
                        }
                    }
                }
            }
            try (Statement st = conn.createStatement()) {
                st.executeQuery("EXPLAIN CLEAN CONNECTION TO ALL FOR DATABASE ex_nodb");
            } catch (SQLException e) {
                System.out.println("missing " + e.getSQLState() + " " + e.getMessage().split("\n")[0]);
            }
        }
    }
}
