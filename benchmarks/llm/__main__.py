from benchmarks.llm.run import main

main()
