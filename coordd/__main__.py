from coordd.entry import main

main()
