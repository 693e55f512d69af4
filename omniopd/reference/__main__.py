from omniopd.reference import main

main()
