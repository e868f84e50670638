package staged;

import org.apache.spark.sql.api.java.UDF1;

/** A UDF shipped in a staged jar: adds the number baked in at build time. */
public class Plus implements UDF1<Long, Long> {
  public static final long N = 1000;

  @Override
  public Long call(Long x) {
    return x + N;
  }
}
