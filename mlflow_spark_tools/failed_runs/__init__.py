"""The failed-run collector (runs in Spark tasks), the payload format, the store on DBFS or a
Volume, signing, and the replay job that drains the store."""
