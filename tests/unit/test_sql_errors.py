from mlflow_spark_tools.spark.sql_errors import describe_sql_error, tables_read

SAIL_MISSING = 'attribute ObjectName([Identifier("_m_val_los")]) is missing from the schema: cannot resolve attribute'
SPARK_MISSING = ("[UNRESOLVED_COLUMN.WITH_SUGGESTION] A column, variable, or function parameter with name "
                 "`_m_val_los` cannot be resolved. Did you mean one of the following? [`_m_val_loss`]. "
                 "SQLSTATE: 42703; line 1 pos 7;\n'Project ['_m_val_los]\n+- SubqueryAlias exp_1\n")


def columns_of(table):
    assert table == "mlflow_exp.exp_1"
    return ["run_id", "_m_val_loss", "_m_Val_Acc", "_p_alpha"]


def test_a_missing_column_is_named_with_close_columns_of_the_tables_read():
    for text in (SAIL_MISSING, SPARK_MISSING):
        line = describe_sql_error(Exception(text), "SELECT _m_val_los FROM mlflow_exp.exp_1", columns_of)
        assert line.startswith("column _m_val_los does not exist (did you mean _m_val_loss?)"), line
        assert "\n" not in line and "ObjectName" not in line and "SQLSTATE" not in line


def test_qualified_columns_tables_functions_and_syntax():
    qualified = 'attribute ObjectName([Identifier("t"), Identifier("x")]) is missing from the schema'
    assert describe_sql_error(Exception(qualified), "SELECT t.x FROM db.t1 t").startswith("column t.x does not exist.")
    for text in ("Table not found: [TABLE_OR_VIEW_NOT_FOUND] Table or view not found: nope",
                 "[TABLE_OR_VIEW_NOT_FOUND] The table or view `nope` cannot be found. SQLSTATE: 42P01"):
        assert describe_sql_error(Exception(text), "SELECT * FROM nope").startswith(
            "table or view nope does not exist")
    assert describe_sql_error(Exception("unknown function: nofunc"), "") == "unknown function nofunc."
    syntax = "invalid argument: found SELEC at 0:5 expected something else, ';', statement, or end of input"
    assert describe_sql_error(Exception(syntax), "SELEC 1").startswith("syntax error: found SELEC at 0:5")
    spark_syntax = ("[PARSE_SYNTAX_ERROR] Syntax error at or near 'SELEC'. SQLSTATE: 42601 (line 1, pos 0)\n\n"
                    "== SQL ==\nSELEC 1\n^^^\n")
    assert describe_sql_error(Exception(spark_syntax), "SELEC 1") == "syntax error at or near 'SELEC'."
    # anything else: its first line, without the plan Spark appends
    other = "[DIVIDE_BY_ZERO] Division by zero. SQLSTATE: 22012\n== SQL (line 1, position 8) =="
    assert describe_sql_error(Exception(other), "SELECT 1/0") == "[DIVIDE_BY_ZERO] Division by zero."


def test_tables_read_after_from_and_join():
    query = "SELECT * FROM `db`.`exp_1` a JOIN db.exp_1_columns c ON 1=1 WHERE x IN (SELECT y FROM t2)"
    assert tables_read(query) == ["db.exp_1", "db.exp_1_columns", "t2"]


def test_a_key_as_logged_names_its_columns():
    line = describe_sql_error(Exception(SAIL_MISSING.replace("_m_val_los", "val_loss")),
                              "SELECT val_loss FROM mlflow_exp.exp_1", columns_of)
    assert line.startswith("column val_loss does not exist (did you mean _m_val_loss?)"), line
